"""Tune post-processing per cell type on cached out-of-fold raw outputs: ``python -m kit.tune``.

Two steps, so that the network runs once and the search never runs it:

``python -m kit.tune cache --model DIR --data DIR --fold K [--folds CSV] --out CACHE``
    runs the model folder's raw prediction once per held-out image and writes one ``.npz`` per
    image and source into ``CACHE/s<k>/`` plus ``CACHE/cache.json`` (model type, sources, the
    model's current post-processing = the "before" parameters, image ids and cell types).
    Raw outputs by model type:

    * ``maskrcnn``: ``predict_raw`` -> :class:`kit.postprocess.Detections` (``Detections.save``:
      boxes, scores, classes, 28x28 mask probabilities, before any threshold);
    * ``cellpose``: ``predict_raw`` -> flows ``dP``, ``cellprob`` logits, style, diameter, ...
      (float32, before any threshold);
    * ``ensemble``: every member on every TTA view (:mod:`kit.ensemble`), mapped back to the
      image: Detections for Mask R-CNN members, label images for the others (rendered with the
      member folder's own settings, e.g. its own ``tuned.yaml``);
    * any other type: its label image (nothing to tune alone).

``python -m kit.tune search --cache CACHE --gt train.csv --out tuned.yaml [--n-jobs 2]``
    needs only the cache and the ground truth (no model folder, no network): per cell type, a
    coordinate search over a grid (:data:`GRIDS`; ``--grid name=v1,v2``) starting from the
    model's own parameters, each candidate scored by ``kit.metric`` MAP over that cell type's
    cached images, candidates x images in parallel (joblib). A value replaces the current one
    only if it raises the MAP, so "after" >= "before". Parameters:

    * ``maskrcnn``: ``score``, ``nms``, ``pixel``, ``min_area`` (:class:`kit.postprocess.TypeParams`);
    * ``cellpose``: ``cellprob_threshold``, ``flow_threshold`` (0 = off), ``min_size``. The
      diameter scale is not searched: a new diameter rescales the network's input, so it
      needs the network;
    * ``ensemble``: ``wbf_iou``, ``wbf_skip`` and the Mask R-CNN thresholds of the fused
      detections (with detection members), ``min_support`` / ``pixel_vote`` of the instance
      vote (with >= 2 voters) and one weight per member ``w0``, ``w1``, ... (with >= 2 members).

    Writes the tuned YAML (``model_type`` plus the section the model reads: ``postprocess``,
    ``cell_types`` or the ensemble's per-type sections) and ``<out>.md``: the before / after MAP
    table per cell type and the search trace. Images are rendered with their true cell type,
    so a tuned Mask R-CNN YAML also sets ``cell_type: given``: the model then uses the type it
    is given (``--cell-types`` or the folder's classifier) instead of its detections' class
    vote. Where that vote was wrong, the model's own OOF MAP differs from "before".
    Mask probabilities are cached as float16 (``Detections.save``).

Applying: copy ``tuned.yaml`` into the model folder (``kit.models.load_model`` applies it on
top of the folder's own settings) or pass ``python -m kit.predict --tuned tuned.yaml``;
:func:`apply_tuned` does it in Python.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kit import CELL_TYPES
from kit.atomic import atomic_open

__all__ = ["GRIDS", "read_tuned", "apply_tuned", "build_cache", "load_cache", "render",
           "search", "SearchResult", "TypeResult", "cellpose_labels"]

CACHE_FILE = "cache.json"
CACHE_FORMAT = 1

# Candidate values of each parameter (``--grid name=v1,v2,...`` replaces one).
GRIDS: dict[str, tuple] = {
    # Mask R-CNN (kit.postprocess.TypeParams); the seed's values lie inside these ranges
    "score": (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7),
    "nms": (0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0),
    "pixel": (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65),
    "min_area": (0, 15, 30, 50, 77, 80, 100, 150),
    # Cellpose (kit.models.cellpose.CellTypeConfig); flow_threshold 0 switches the check off
    "cellprob_threshold": (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0),
    "flow_threshold": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    "min_size": (0, 15, 30, 60),
    # ensembles (kit.ensemble.EnsembleTypeParams); w<i> = member weights
    "wbf_iou": (0.4, 0.5, 0.55, 0.6, 0.7, 0.8),
    "wbf_skip": (0.0, 0.05, 0.1, 0.2, 0.3),
    "min_support": (0.2, 0.34, 0.5, 0.67, 0.75, 1.0),
    "pixel_vote": (0.25, 0.34, 0.5, 0.67, 0.75, 1.0),
    "weight": (0.0, 0.5, 1.0, 2.0),
}
MASKRCNN_PARAMS = ("score", "nms", "pixel", "min_area")
CELLPOSE_PARAMS = ("cellprob_threshold", "flow_threshold", "min_size")
PP_KEYS = ("score", "nms", "pixel", "min_area", "max_area")
ENS_KEYS = ("wbf_iou", "wbf_skip", "min_support", "pixel_vote", "match_iou")


# ---------------------------------------------------------------------------------------------
# Tuned YAML: read, apply

_TUNED_SECTIONS = {"maskrcnn": ("cell_type", "postprocess"), "cellpose": ("cell_types",),
                   "ensemble": ("postprocess",) + CELL_TYPES}


def read_tuned(path) -> dict:
    """The checked mapping of a tuned YAML: ``model_type`` and its sections (see module doc)."""
    from kit.config import ConfigError, load_yaml

    doc = load_yaml(path)
    kind = doc.get("model_type")
    if kind not in _TUNED_SECTIONS:
        raise ConfigError(f"{path}: model_type must be one of {sorted(_TUNED_SECTIONS)}, got {kind!r}")
    valid = ("model_type",) + _TUNED_SECTIONS[kind]
    unknown = [k for k in doc if k not in valid]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} for model_type {kind}; valid keys are "
                          f"{list(valid)}")
    return doc


def _model_kind(model) -> str | None:
    return getattr(model, "TYPE", None)


def apply_tuned(model, tuned, kind: str | None = None):
    """Apply a tuned YAML (path or :func:`read_tuned` mapping) to a loaded model, in place.

    ``kind``: the model folder's type (default: ``model.TYPE``); it must equal the file's
    ``model_type``. Adapters per type: Mask R-CNN's ``config.postprocess`` is replaced,
    Cellpose's ``config.cell_types.<type>`` keys are updated, an ensemble's ``postprocess``
    and per-type sections are replaced. Returns the model.
    """
    from kit import config as kconfig

    where = str(tuned) if not isinstance(tuned, dict) else "tuned"
    doc = read_tuned(tuned) if not isinstance(tuned, dict) else tuned
    kind = kind or _model_kind(model)
    if doc["model_type"] != kind:
        raise ValueError(f"{where}: tuned for a {doc['model_type']!r} model, not {kind!r}")
    if kind == "maskrcnn":
        from kit.postprocess import PostprocessConfig

        if "postprocess" in doc:
            pp = kconfig.from_dict(PostprocessConfig, doc["postprocess"], f"{where}: postprocess")
            model.config = dataclasses.replace(model.config, postprocess=pp)
        if "cell_type" in doc:
            if doc["cell_type"] not in ("vote", "given"):
                raise ValueError(f"{where}: cell_type must be 'vote' or 'given', got {doc['cell_type']!r}")
            model.config = dataclasses.replace(model.config, cell_type=doc["cell_type"])
    elif kind == "cellpose":
        from kit.models.cellpose import CellTypeConfig

        sections = doc.get("cell_types") or {}
        unknown = [k for k in sections if k not in CELL_TYPES]
        if unknown:
            raise ValueError(f"{where}: cell_types: unknown cell type(s) {unknown}; valid {list(CELL_TYPES)}")
        cts = dict(model.config.cell_types)
        for ct, upd in sections.items():
            cts[ct] = kconfig.from_dict(CellTypeConfig, {**kconfig.to_dict(cts[ct]), **(upd or {})},
                                        f"{where}: cell_types.{ct}")
        model.config = dataclasses.replace(model.config, cell_types=cts)
    elif kind == "ensemble":
        from kit.ensemble import EnsembleConfig

        merged = {**kconfig.to_dict(model.config),
                  **{k: v for k, v in doc.items() if k != "model_type"}}
        model.config = kconfig.from_dict(EnsembleConfig, merged, where)
    return model


# ---------------------------------------------------------------------------------------------
# Cache


def cellpose_labels(raw: dict, params: dict, max_size_fraction: float = 0.4) -> np.ndarray:
    """Adapter: ``CellposeSegmenter.postprocess_raw`` (cellpose's dynamics) without a network.

    Calls the model's own method on a stand-in holding the only things it reads (the
    inference ``max_size_fraction`` and a CPU device), so tuning renders exactly what the model
    renders. ``params``: :class:`kit.models.cellpose.CellTypeConfig` keys.
    """
    from types import SimpleNamespace

    import torch

    from kit.models.cellpose import CellposeSegmenter

    stub = SimpleNamespace(
        config=SimpleNamespace(inference=SimpleNamespace(max_size_fraction=max_size_fraction),
                               cell_types={}),
        cp=SimpleNamespace(device=torch.device("cpu")))
    return CellposeSegmenter.postprocess_raw(stub, raw, dict(params))


def _save_npz(path: Path, **arrays) -> None:
    """``np.savez_compressed`` through :func:`kit.atomic.atomic_open` (the name kept as given)."""
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _save_cellpose_raw(raw: dict, path: Path) -> None:
    _save_npz(path, **{k: np.asarray(v) for k, v in raw.items()})


def _load_cellpose_raw(path: Path) -> dict:
    out = {}
    with np.load(path) as z:
        for k in z.files:
            v = z[k]
            if v.ndim == 0:
                v = v.item()
            elif k == "shape":
                v = tuple(int(s) for s in v)
            out[k] = v
    return out


def _save_labels(labels: np.ndarray, path: Path) -> None:
    _save_npz(path, labels=np.asarray(labels, np.int32))


def _load_labels(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return z["labels"]


def load_source(path: Path, kind: str):
    """One cached raw output: Detections, a cellpose raw dict or a label image."""
    if kind == "detections":
        from kit.postprocess import Detections

        return Detections.load(path)
    if kind == "cellpose":
        return _load_cellpose_raw(path)
    if kind == "labels":
        return _load_labels(path)
    raise ValueError(f"unknown cached source kind {kind!r}")


def _defaults_of(model, kind: str) -> dict:
    from kit import config as kconfig

    if kind == "maskrcnn":
        return {"postprocess": kconfig.to_dict(model.config.postprocess),
                "cell_type": model.config.cell_type}
    if kind == "cellpose":
        return {"cell_types": {ct: kconfig.to_dict(model.config.cell_types[ct]) for ct in CELL_TYPES},
                "max_size_fraction": float(model.config.inference.max_size_fraction)}
    if kind == "ensemble":
        return {"config": kconfig.to_dict(model.config)}
    return {}


def build_cache(model_dir, records, out, progress: bool = True) -> Path:
    """Run the model folder once per record, write ``out`` (module docstring). Returns ``out``."""
    from tqdm import tqdm

    from kit.models import load_model, model_type

    model_dir, out = Path(model_dir), Path(out)
    kind = model_type(model_dir)
    model = load_model(model_dir)
    if kind == "ensemble":
        from kit.ensemble import raw_detections, tta_apply, tta_invert_detections, tta_invert_labels

        sources = [{"member": i, "view": v, "kind": model.kinds[i]}
                   for v in model.config.tta for i in range(len(model.members))]
    elif kind == "maskrcnn":
        sources = [{"member": 0, "view": "id", "kind": "detections"}]
    elif kind == "cellpose":
        sources = [{"member": 0, "view": "id", "kind": "cellpose"}]
    else:
        sources = [{"member": 0, "view": "id", "kind": "labels"}]
    for k, s in enumerate(sources):
        s["dir"] = f"s{k}"
        (out / s["dir"]).mkdir(parents=True, exist_ok=True)
    images = []
    t0 = time.time()
    for rec in tqdm(list(records), desc="cache raw outputs", unit="img", disable=not progress,
                    file=sys.stderr):
        if rec.cell_type is None:
            raise ValueError(f"record {rec.id!r} has no cell type (tuning is per cell type)")
        image = rec.load_image()
        for s in sources:
            path = out / s["dir"] / f"{rec.id}.npz"
            if kind == "ensemble":
                m = model.members[s["member"]]
                view = tta_apply(s["view"], image)
                if s["kind"] == "detections":
                    tta_invert_detections(s["view"], raw_detections(m, view)).save(path)
                else:
                    _save_labels(tta_invert_labels(s["view"], m.predict(view, rec.cell_type)), path)
            elif kind == "maskrcnn":
                model.predict_raw(image).save(path)
            elif kind == "cellpose":
                _save_cellpose_raw(model.predict_raw(image, rec.cell_type), path)
            else:
                _save_labels(model.predict(image, rec.cell_type), path)
        images.append({"id": rec.id, "cell_type": rec.cell_type, "shape": list(rec.shape)})
    meta = {"format": CACHE_FORMAT, "model_type": kind, "model": str(model_dir),
            "sources": sources, "defaults": _defaults_of(model, kind), "images": images,
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
        raise ValueError(f"{path}: cache format {meta.get('format')!r}, expected {CACHE_FORMAT}")
    for key in ("model_type", "sources", "defaults", "images"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    return meta


# ---------------------------------------------------------------------------------------------
# Rendering one image from the cache with candidate parameters


def default_params(meta: dict, cell_type: str) -> dict:
    """The flat parameters of ``cell_type`` the cached model used (the "before")."""
    kind, d = meta["model_type"], meta["defaults"]
    if kind == "maskrcnn":
        return {k: d["postprocess"][cell_type][k] for k in PP_KEYS}
    if kind == "cellpose":
        return dict(d["cell_types"][cell_type])
    if kind == "ensemble":
        cfg = d["config"]
        tp = cfg[cell_type]
        out = {k: tp[k] for k in ENS_KEYS}
        out.update({k: cfg["postprocess"][cell_type][k] for k in PP_KEYS})
        weights = tp["weights"] or [m["weight"] for m in cfg["members"]]
        out.update({f"w{i}": float(w) for i, w in enumerate(weights)})
        return out
    return {}


def tunable_params(meta: dict) -> list[str]:
    """The parameters the search varies for this cache (module docstring)."""
    kind = meta["model_type"]
    if kind == "maskrcnn":
        return list(MASKRCNN_PARAMS)
    if kind == "cellpose":
        return list(CELLPOSE_PARAMS)
    if kind != "ensemble":
        return []
    kinds = [s["kind"] for s in meta["sources"]]
    n_members = len(meta["defaults"]["config"]["members"])
    out = []
    if "detections" in kinds:
        out += list(MASKRCNN_PARAMS) + ["wbf_iou", "wbf_skip"]
    n_voters = (1 if "detections" in kinds else 0) + kinds.count("labels")
    if n_voters > 1:
        out += ["min_support", "pixel_vote"]
    if n_members > 1:
        out += [f"w{i}" for i in range(n_members)]
    return out


_MEMO: dict = {}
_MEMO_MAX = 256
_FUSED: dict = {}   # fused ensemble detections, by image and fusion parameters
_FUSED_MAX = 32


def _memo(key, make: Callable):
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = make()
    return _MEMO[key]


def _cached(cache_dir: Path, source: dict, image_id: str):
    path = Path(cache_dir) / source["dir"] / f"{image_id}.npz"
    return _memo(("src", str(path), path.stat().st_mtime_ns),
                 lambda: load_source(path, source["kind"]))


def render(cache_dir, meta: dict, image_id: str, cell_type: str, params: dict) -> np.ndarray:
    """The (H, W) int32 label image of one cached image with the flat ``params`` (all keys of
    :func:`default_params`). Uses only the cache: no model, no network."""
    kind = meta["model_type"]
    sources = meta["sources"]
    if kind == "maskrcnn":
        from kit import config as kconfig
        from kit.postprocess import PostprocessConfig, postprocess

        pp = kconfig.from_dict(PostprocessConfig, meta["defaults"]["postprocess"], "cache defaults")
        pp = pp.with_params(cell_type, **{k: params[k] for k in PP_KEYS})
        return postprocess(_cached(cache_dir, sources[0], image_id), cell_type, pp)
    if kind == "cellpose":
        from kit.ensemble import tta_invert_labels

        raw = _cached(cache_dir, sources[0], image_id)
        labels = cellpose_labels(raw, params, meta["defaults"].get("max_size_fraction", 0.4))
        return tta_invert_labels(sources[0]["view"], labels)
    if kind == "ensemble":
        from kit import config as kconfig
        from kit.ensemble import EnsembleTypeParams, combine, fuse_detections
        from kit.postprocess import PostprocessConfig

        cfg = meta["defaults"]["config"]
        n_members = len(cfg["members"])
        weights = [float(params[f"w{i}"]) for i in range(n_members)]
        if sum(weights) <= 0:
            raise ValueError(f"all member weights are 0: {weights}")
        n_views = {}
        for s in sources:
            n_views[s["member"]] = n_views.get(s["member"], 0) + 1
        dets, labels, det_keys = [], [], []
        for s in sources:
            w = weights[s["member"]] / n_views[s["member"]]
            if w <= 0:
                continue
            obj = _cached(cache_dir, s, image_id)
            if s["kind"] == "detections":
                dets.append((obj, w))
                path = Path(cache_dir) / s["dir"] / f"{image_id}.npz"
                det_keys.append((str(path), path.stat().st_mtime_ns, w))
            else:
                labels.append((obj, w))
        etp = EnsembleTypeParams(weights=tuple(weights), **{k: params[k] for k in ENS_KEYS})
        pp = kconfig.from_dict(PostprocessConfig, cfg["postprocess"], "cache defaults")
        pp = pp.with_params(cell_type, **{k: params[k] for k in PP_KEYS})
        if not dets and not labels:
            h, w = next(i["shape"] for i in meta["images"] if i["id"] == image_id)
            return np.zeros((h, w), np.int32)
        conf = cfg.get("conf_type", "avg")
        fused = None
        if dets:   # the fusion depends on few parameters: reuse it across candidates
            key = (etp.wbf_iou, etp.wbf_skip, conf, tuple(det_keys))
            if key not in _FUSED:
                if len(_FUSED) >= _FUSED_MAX:
                    _FUSED.clear()
                _FUSED[key] = fuse_detections([d for d, _ in dets], [w for _, w in dets],
                                              etp.wbf_iou, etp.wbf_skip, conf)
            fused = _FUSED[key]
        return combine(dets, labels, cell_type, etp, pp, conf, fused=fused)
    return _cached(cache_dir, sources[0], image_id)


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


def _candidates(name: str, current, grids: dict) -> list:
    grid = grids.get(name) or grids.get("weight" if name.startswith("w") and name[1:].isdigit() else name)
    if grid is None:
        raise ValueError(f"no grid for parameter {name!r}; give one with --grid {name}=v1,v2,...")
    return [v for v in grid if v != current]


def _valid(meta: dict, cell_type: str, params: dict) -> bool:
    """Whether a candidate parameter set is admissible (e.g. min_area <= max_area)."""
    if "min_area" in params and params["min_area"] > params.get("max_area", float("inf")):
        return False
    ws = [v for k, v in params.items() if k.startswith("w") and k[1:].isdigit()]
    return not ws or sum(ws) > 0


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
    grids = {**GRIDS, **(grids or {})}
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
            flat = parallel(delayed(_score_one)(str(cache_dir), meta, str(gt), i, ct, p)
                            for p in cands for i in ids)
            return [float(np.mean(flat[k * len(ids):(k + 1) * len(ids)])) for k in range(len(cands))]

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
                    cands = [{**current, name: v} for v in _candidates(name, current[name], grids)]
                    cands = [c for c in cands if _valid(meta, ct, c)]
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
    from kit import config as kconfig
    from kit.postprocess import PostprocessConfig

    kind = meta["model_type"]
    best = {ct: r.best for ct, r in result.types.items()}
    if kind == "maskrcnn":
        pp = kconfig.from_dict(PostprocessConfig, meta["defaults"]["postprocess"], "cache defaults")
        for ct, p in best.items():
            pp = pp.with_params(ct, **{k: p[k] for k in PP_KEYS})
        # tuned per true cell type: the model must use the given type (kit.predict: the
        # --cell-types file or the folder's classifier), not its detections' class vote
        return {"model_type": kind, "cell_type": "given", "postprocess": kconfig.to_dict(pp)}
    if kind == "cellpose":
        cts = {}
        for ct in CELL_TYPES:
            p = best.get(ct, meta["defaults"]["cell_types"][ct])
            cts[ct] = {k: p[k] for k in CELLPOSE_PARAMS}
        return {"model_type": kind, "cell_types": cts}
    if kind == "ensemble":
        cfg = meta["defaults"]["config"]
        pp = kconfig.from_dict(PostprocessConfig, cfg["postprocess"], "cache defaults")
        doc = {"model_type": kind}
        n = len(cfg["members"])
        for ct in CELL_TYPES:
            if ct in best:
                p = best[ct]
                pp = pp.with_params(ct, **{k: p[k] for k in PP_KEYS})
                doc[ct] = {"weights": [float(p[f"w{i}"]) for i in range(n)],
                           **{k: p[k] for k in ENS_KEYS}}
            else:
                doc[ct] = cfg[ct]
        doc["postprocess"] = kconfig.to_dict(pp)
        return doc
    raise ValueError(f"no tuned document for model type {kind!r}")


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
    s.add_argument("--model-type", choices=("maskrcnn", "cellpose", "ensemble"), default=None,
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
