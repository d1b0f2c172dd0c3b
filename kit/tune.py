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
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kit import CELL_TYPES
from kit.atomic import atomic_open
from kit.memo import BoundedMemo
from kit.models.family import load_raw, save_raw
from kit.models.registry import family
from kit.models.tuned import read_tuned

__all__ = ["grids_of", "build_cache", "load_cache", "render", "search", "SearchResult",
           "TypeResult", "tuned_document"]

CACHE_FILE = "cache.json"
CACHE_FORMAT = 2


def grids_of(kind: str) -> dict[str, tuple]:
    """The candidate values of the tunable parameters of model type ``kind`` (its family's)."""
    return dict(family(kind).grids)


# ---------------------------------------------------------------------------------------------
# Cache


def build_cache(model_dir, records, out, progress: bool = True, tuned: bool = True) -> Path:
    """Run the model folder once per record, write ``out`` (module docstring). Returns ``out``.
    ``tuned=False``: the folder's own ``tuned.yaml`` is not applied (its "before" state is
    the trained model's; an ensemble's members keep theirs)."""
    from tqdm import tqdm

    from kit.models import load_model, model_type

    model_dir, out = Path(model_dir), Path(out)
    kind = model_type(model_dir)
    fam = family(kind)
    model = load_model(model_dir, tuned=tuned)
    sources = fam.cache_sources(model)
    for k, s in enumerate(sources):
        s["dir"] = f"s{k}"
        (out / s["dir"]).mkdir(parents=True, exist_ok=True)
    images = []
    t0 = time.time()
    for rec in tqdm(list(records), desc="cache raw outputs", unit="img", disable=not progress,
                    file=sys.stderr):
        if rec.cell_type is None:
            raise ValueError(f"record {rec.id!r} has no cell type (tuning is per cell type)")
        raws = fam.raw_outputs(model, rec.load_image(), rec.cell_type)
        for s, raw in zip(sources, raws):
            save_raw(s["format"], raw, out / s["dir"] / f"{rec.id}.npz")
        images.append({"id": rec.id, "cell_type": rec.cell_type, "shape": list(rec.shape)})
    meta = {"format": CACHE_FORMAT, "model_type": kind, "model": str(model_dir),
            "sources": sources, "state": fam.tuning_state(model), "images": images,
            "seconds": round(time.time() - t0, 1)}
    with atomic_open(out / CACHE_FILE) as f:
        f.write(json.dumps(meta, indent=1) + "\n")
    return out


def load_cache(cache_dir) -> dict:
    """``cache.json`` of a cache folder, checked."""
    path = Path(cache_dir) / CACHE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{cache_dir}: not a tuning cache (no {CACHE_FILE}); make one with "
                                "python -m kit.tune cache")
    from kit.models import read_json_object

    meta = read_json_object(path, "tuning cache index")
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: cache format {meta.get('format')!r}, expected {CACHE_FORMAT} "
                         "(make it again with python -m kit.tune cache)")
    for key in ("model_type", "sources", "state", "images"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    family(meta["model_type"])  # a registered family
    return meta


# ---------------------------------------------------------------------------------------------
# Rendering one image from the cache with candidate parameters


def default_params(meta: dict, cell_type: str) -> dict:
    """The flat parameters of ``cell_type`` the cached model used (the "before")."""
    return family(meta["model_type"]).current_params(meta["state"], cell_type)


def tunable_params(meta: dict) -> list[str]:
    """The parameters the search varies for this cache (the family's)."""
    return family(meta["model_type"]).tunable_params(meta["state"])


_MEMO = BoundedMemo(256)   # loaded raw outputs and ground truth, by file and mtime


def _memo(key, make: Callable):
    return _MEMO.get(key, make)


def render(cache_dir, meta: dict, image_id: str, cell_type: str, params: dict) -> np.ndarray:
    """The (H, W) int32 label image of one cached image with the flat ``params`` (all keys of
    :func:`default_params`). Uses only the cache: no model, no network."""
    raws, key = [], []
    for s in meta["sources"]:
        path = Path(cache_dir) / s["dir"] / f"{image_id}.npz"
        stamp = (str(path), path.stat().st_mtime_ns)
        raws.append(_memo(("src",) + stamp, lambda: load_raw(s["format"], path)))
        key.append(stamp)
    return family(meta["model_type"]).render(raws, meta["state"], cell_type, params, tuple(key))


def _gt_path(gt) -> Path:
    gt = Path(gt)
    return gt / "train.csv" if gt.is_dir() else gt


def _ground_truth(gt) -> dict:
    from kit.data import read_train_csv

    path = _gt_path(gt)

    def read():
        return {r.id: (r.rles, r.shape) for r in read_train_csv(path, check_images=False)}

    return _memo(("gt", str(path), path.stat().st_mtime_ns), read)


def _score_one(cache_dir, meta, gt, image_id, cell_type, params) -> float:
    """Worker task: the competition score of one cached image rendered with ``params``."""
    from kit import metric

    rles, shape = _ground_truth(gt)[image_id]
    labels = render(cache_dir, meta, image_id, cell_type, params)
    return metric.image_score(list(rles), labels, shape).score


# ---------------------------------------------------------------------------------------------
# Search


@dataclass
class TypeResult:
    cell_type: str
    ids: list
    before: float
    after: float
    defaults: dict
    best: dict
    trace: list = field(default_factory=list)   # (param, value, MAP, accepted)
    n_evaluations: int = 0


@dataclass
class SearchResult:
    model_type: str
    types: dict          # cell type -> TypeResult
    params: list         # the searched parameter names
    seconds: float = 0.0

    def overall(self, which: str) -> float:
        """Image-weighted mean of the per-type MAPs (a search has >= 1 image)."""
        return float(np.mean([getattr(r, which) for r in self.types.values() for _ in r.ids]))

    def table(self) -> str:
        """Markdown: per cell type images, MAP before (the model's parameters) and after."""
        lines = ["| cell type | images | MAP before (defaults) | MAP after (tuned) | change |",
                 "|---|---:|---:|---:|---:|"]
        for ct, r in self.types.items():
            lines.append(f"| {ct} | {len(r.ids)} | {r.before:.4f} | {r.after:.4f} | "
                         f"{r.after - r.before:+.4f} |")
        n = sum(len(r.ids) for r in self.types.values())
        b, a = self.overall("before"), self.overall("after")
        lines.append(f"| all | {n} | {b:.4f} | {a:.4f} | {a - b:+.4f} |")
        return "\n".join(lines)


def _candidates(fam, name: str, current, grids: dict) -> list:
    grid = grids.get(name) or grids.get(fam.grid_name(name))
    if grid is None:
        raise ValueError(f"no grid for parameter {name!r}; give one with --grid {name}=v1,v2,...")
    return [v for v in grid if v != current]


def search(cache_dir, gt, model_type: str | None = None, n_jobs: int = 1, rounds: int = 2,
           grids: dict | None = None, params: Sequence[str] | None = None,
           types: Sequence[str] | None = None, ids: Sequence[str] | None = None,
           log: Callable = print) -> SearchResult:
    """Coordinate search per cell type on a cache (module docstring). Never loads a model.

    ``types`` / ``ids``: tune only these cell types / cached images (default: all).
    """
    from joblib import Parallel, delayed

    cache_dir = Path(cache_dir)
    meta = load_cache(cache_dir)
    kind = meta["model_type"]
    if model_type is not None and model_type != kind:
        raise ValueError(f"--model-type {model_type}: the cache in {cache_dir} holds raw outputs of a "
                         f"{kind!r} model")
    fam = family(kind)
    grids = {**fam.grids, **(grids or {})}
    names = tunable_params(meta)
    if params:
        bad = [p for p in params if p not in names]
        if bad:
            raise ValueError(f"parameter(s) {bad} are not tunable for this cache; tunable: {names}")
        names = [p for p in names if p in params]
    if not names:
        raise ValueError(f"nothing to tune for a {kind!r} model alone: put it in an ensemble "
                         "(kit.ensemble, e.g. with TTA views) and tune the vote")
    gt_ids = _ground_truth(gt)
    missing = [i["id"] for i in meta["images"] if i["id"] not in gt_ids]
    if missing:
        raise ValueError(f"{_gt_path(gt)}: no ground truth for {len(missing)} cached image(s), "
                         f"e.g. {missing[:3]}")
    by_type: dict[str, list] = {}
    for i in meta["images"]:
        if ids is None or i["id"] in set(ids):
            by_type.setdefault(i["cell_type"], []).append(i["id"])
    wanted = [ct for ct in CELL_TYPES if ct in by_type and (not types or ct in types)]
    if not wanted:
        raise ValueError(f"{cache_dir}: nothing to tune: no cached image of the chosen cell "
                         f"types / ids ({len(meta['images'])} cached)")
    t0 = time.time()
    results = {}
    with Parallel(n_jobs=n_jobs) as parallel:
        def evaluate(ct, ids, cands):
            # image-major: one image's candidates run one after another in one worker, so a
            # family's memo of work they share (e.g. Cellpose's flow following) is hit
            flat = parallel(delayed(_score_one)(str(cache_dir), meta, str(gt), i, ct, p)
                            for i in ids for p in cands)
            n = len(cands)
            return [float(np.mean(flat[k::n])) for k in range(n)]

        for ct in wanted:
            ids = by_type[ct]
            current = default_params(meta, ct)
            before = evaluate(ct, ids, [current])[0]
            best = before
            res = TypeResult(ct, ids, before, before, dict(current), dict(current), n_evaluations=1)
            log(f"{ct}: {len(ids)} image(s), MAP with the model's parameters {before:.4f}")
            for rnd in range(rounds):
                changed = False
                for name in names:
                    cands = [{**current, name: v}
                             for v in _candidates(fam, name, current[name], grids)]
                    cands = [c for c in cands if fam.valid(c, meta["state"], ct)]
                    if not cands:
                        continue
                    scores = evaluate(ct, ids, cands)
                    res.n_evaluations += len(cands)
                    k = int(np.argmax(scores))
                    accepted = scores[k] > best + 1e-12
                    for c, s in zip(cands, scores):
                        res.trace.append((rnd, name, c[name], s, bool(accepted and c is cands[k])))
                    if accepted:
                        current, best, changed = cands[k], scores[k], True
                        log(f"{ct}: round {rnd + 1}: {name} = {current[name]} -> MAP {best:.4f}")
                if not changed:
                    break
            res.after, res.best = best, dict(current)
            results[ct] = res
    return SearchResult(kind, results, names, round(time.time() - t0, 1))


def tuned_document(meta: dict, result: SearchResult) -> dict:
    """The tuned YAML mapping: the model's own parameters with the tuned cell types replaced."""
    best = {ct: r.best for ct, r in result.types.items()}
    return family(meta["model_type"]).tuned_document(meta["state"], best)


def write_outputs(out: Path, meta: dict, result: SearchResult, cache_dir, gt) -> tuple[Path, Path]:
    """Write the tuned YAML (with the table as a header comment) and ``<out>.md``."""
    import yaml

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = tuned_document(meta, result)
    read_back_check = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    header = [f"# written by python -m kit.tune search --cache {cache_dir} --gt {gt}",
              f"# model: {meta.get('model')} ({meta['model_type']}); searched: {', '.join(result.params)}",
              "# MAP on the cached out-of-fold images (kit.metric), before = the model's parameters:"]
    header += ["#   " + line for line in result.table().splitlines()]
    with atomic_open(out) as f:
        f.write("\n".join(header) + "\n" + read_back_check)
    read_tuned(out)  # what we wrote must read back
    md = out.with_suffix(".md")
    lines = [f"# Tuning of {meta.get('model')} ({meta['model_type']})", "",
             f"cache `{cache_dir}`, ground truth `{gt}`, searched {', '.join(result.params)}, "
             f"{result.seconds} s", "", result.table(), ""]
    for ct, r in result.types.items():
        lines += [f"## {ct}", "", "| parameter | before | after |", "|---|---:|---:|"]
        lines += [f"| {k} | {r.defaults[k]} | {r.best[k]} |" for k in result.params]
        lines += ["", f"{r.n_evaluations} candidate sets; trace (round, parameter, value, MAP, accepted):", ""]
        lines += [f"- {t[0] + 1} {t[1]}={t[2]}: {t[3]:.4f}{' *' if t[4] else ''}" for t in r.trace]
        lines.append("")
    with atomic_open(md) as f:
        f.write("\n".join(lines))
    return out, md


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
