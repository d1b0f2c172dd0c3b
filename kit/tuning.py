"""Post-processing tuning on cached raw outputs: the library behind ``python -m kit.tune``.

:func:`build_cache` runs a model folder once per image and saves its raw outputs;
:func:`search` tunes the family's post-processing parameters per cell type on such a cache
with the competition metric, never loading a model; :func:`render` draws one cached image
with given parameters. What the raw outputs and parameters are comes from the model's family
(:mod:`kit.models.family`); the command line and the cache layout are documented in
:mod:`kit.tune`.
"""
from __future__ import annotations

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

    def gains(self) -> str:
        """One line: ``"shsy5y 0.041 -> 0.043, cort 0.224 -> 0.292"`` (MAP before -> after)."""
        return ", ".join(f"{ct} {r.before:.3f} -> {r.after:.3f}" for ct, r in self.types.items())


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


