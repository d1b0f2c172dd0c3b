"""Tune post-processing per cell type on cached out-of-fold raw outputs: ``python -m kit.tune``.

Two steps, so that the network runs once and the search never runs it. Everything
model-specific comes from the model's family (:mod:`kit.models.family`): what its raw output
is, which parameters it has, their candidate values, how a raw output is rendered and what a
tuned YAML holds.

``python -m kit.tune cache --model DIR --data DIR --fold K [--folds CSV] --out CACHE``
    runs the model folder's raw prediction once per image of fold K and writes one ``.npz``
    per image and source into ``CACHE/s<k>/`` plus ``CACHE/cache.json`` (model type, sources,
    the model's tuning state = its current post-processing, the "before" parameters, image ids
    and cell types). Raw outputs by family:

    * ``maskrcnn``: :class:`kit.postprocess.Detections` (boxes, scores, classes, 28x28 mask
      probabilities as float16, before any threshold);
    * ``cellpose``: flows ``dP``, ``cellprob`` logits, style, diameter, ... (float32, before
      any threshold);
    * ``baseline``: the image itself (the classical pipeline re-runs per candidate);
    * ``ensemble``: every member on every TTA view (:mod:`kit.models.ensemble`), mapped back
      to the image: Detections for members whose family fuses detections, label images for the
      others (rendered with the member folder's own settings, e.g. its own ``tuned.yaml``).

``python -m kit.tune search --cache CACHE --gt train.csv --out tuned.yaml [--n-jobs 2]``
    needs only the cache and the ground truth (no model folder, no network): per cell type, a
    coordinate search over the family's grids (``--grid name=v1,v2`` replaces one) starting
    from the model's own parameters, each candidate scored by ``kit.metric`` MAP over that
    cell type's cached images, candidates x images in parallel (joblib). A value replaces the
    current one only if it raises the MAP, so "after" >= "before" on the searched images.
    Parameters: ``maskrcnn`` ``score``, ``nms``, ``pixel``, ``min_area``; ``cellpose``
    ``cellprob_threshold``, ``flow_threshold`` (0 = off), ``min_size``; ``baseline``
    ``threshold_k``, ``smooth_sigma``, ``shrink``, ``min_distance``, ``dist_sigma``,
    ``min_area``; ``ensemble`` ``wbf_iou``, ``wbf_skip`` and the thresholds of the fused
    detections (with detection members), ``min_support`` / ``pixel_vote`` (with >= 2 voters),
    one weight per member ``w0``, ``w1``, ... (with >= 2 members).

    Writes the tuned YAML (``model_type`` plus the family's sections) and ``<out>.md``: the
    before / after MAP table per cell type and the search trace. Images are rendered with
    their true cell type, so a tuned Mask R-CNN YAML also sets ``cell_type: given``.

    The searched images choose the parameters, so their "after" is not an honest score: tune
    on the out-of-fold caches of the training folds and report on a fold the search never saw.

Applying: copy ``tuned.yaml`` into the model folder (``kit.models.load_model`` applies it on
top of the folder's own settings) or pass ``python -m kit.predict --tuned tuned.yaml``;
:func:`kit.models.tuned.apply_tuned` does it in Python.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from kit import CELL_TYPES
from kit.tuning import (CACHE_FILE, CACHE_FORMAT, SearchResult, TypeResult, build_cache,
                        default_params, grids_of, load_cache, render, search, tunable_params,
                        tuned_document, write_outputs)

# the library is kit.tuning; its names stay importable from here
__all__ = ["grids_of", "build_cache", "load_cache", "render", "search", "SearchResult",
           "TypeResult", "tuned_document", "write_outputs", "default_params", "tunable_params",
           "CACHE_FILE", "CACHE_FORMAT", "main"]


# ---------------------------------------------------------------------------------------------
# CLI


def _parse_grid(items: Sequence[str]) -> dict:
    out = {}
    for item in items or ():
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"--grid {item!r}: expected name=v1,v2,...")
        try:
            out[name] = tuple(float(v) if any(c in v for c in ".eE") else int(v)
                              for v in values.split(","))
        except ValueError:
            raise ValueError(f"--grid {item!r}: values must be numbers") from None
    return out


def _cache_main(args) -> int:
    from kit.data import read_competition_dir, read_folds_csv

    folds_csv = args.folds or (args.model / "folds.csv")
    if not Path(folds_csv).is_file():
        raise FileNotFoundError(f"no folds file: pass --folds (looked for {folds_csv})")
    folds = read_folds_csv(folds_csv)
    records = [r for r in read_competition_dir(args.data).train if folds.get(r.id) == args.fold]
    if args.ids:
        records = [r for r in records if r.id in set(args.ids)]
    if args.max_images:
        records = records[: args.max_images]
    if not records:
        raise ValueError(f"no train image of {args.data} is in fold {args.fold} of {folds_csv}")
    from kit.atomic import check_writable_dir

    check_writable_dir(args.out, "cache folder")
    out = build_cache(args.model, records, args.out, progress=not args.quiet)
    meta = load_cache(out)
    print(f"cached {len(meta['images'])} image(s) x {len(meta['sources'])} source(s) of "
          f"{args.model} ({meta['model_type']}) in {out} ({meta['seconds']} s)")
    return 0


def _search_main(args) -> int:
    from kit.atomic import check_writable

    check_writable(args.out, "tuned YAML")
    result = search(args.cache, args.gt, args.model_type, args.n_jobs, args.rounds,
                    _parse_grid(args.grid), args.params, args.types,
                    log=(lambda *a: None) if args.quiet else print)
    meta = load_cache(args.cache)
    out, md = write_outputs(args.out, meta, result, args.cache, args.gt)
    print(result.table())
    print(f"wrote {out} and {md} ({result.seconds} s)")
    return 0


def _main(argv=None) -> int:
    from kit.errors import one_line

    parser = argparse.ArgumentParser(prog="python -m kit.tune", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="run a model once per held-out image, save raw outputs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--model", type=Path, required=True, help="model folder (any type)")
    c.add_argument("--data", type=Path, required=True, help="competition directory")
    c.add_argument("--fold", type=int, default=0, help="held-out fold to cache")
    c.add_argument("--folds", type=Path, default=None, help="id,fold CSV (default: MODEL/folds.csv)")
    c.add_argument("--ids", nargs="*", default=None, help="only these ids of the fold")
    c.add_argument("--max-images", type=int, default=0, help="cache at most this many (0 = all)")
    c.add_argument("--out", type=Path, required=True, help="cache folder to write")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("search", help="tune post-processing on a cache (no network)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--cache", type=Path, required=True, help="folder written by 'cache'")
    s.add_argument("--gt", type=Path, required=True, help="train.csv (or its directory)")
    from kit.models import registry

    s.add_argument("--model-type", choices=registry.names(), default=None,
                   help="check the cache holds this model type (default: whatever it holds)")
    s.add_argument("--out", type=Path, required=True, help="tuned YAML to write (+ .md table)")
    s.add_argument("--n-jobs", type=int, default=1, help="joblib workers")
    s.add_argument("--rounds", type=int, default=2, help="coordinate-search rounds (max)")
    s.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="replace a parameter's candidate values (repeat)")
    s.add_argument("--params", nargs="*", default=None, help="search only these parameters")
    s.add_argument("--types", nargs="*", default=None, choices=CELL_TYPES, help="only these cell types")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        return _cache_main(args) if args.command == "cache" else _search_main(args)
    except (ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
