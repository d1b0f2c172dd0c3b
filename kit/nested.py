"""Nested post-processing tuning and held-out scoring on cached raw outputs.

The honest order (``python -m kit.report`` runs it per model):

1. :func:`ensure_cache` runs a model folder once over the images that may choose (an inner
   validation split of the training folds) and once over the held-out fold, into two caches
   (:func:`kit.tuning.build_cache`);
2. :func:`kit.tuning.search` tunes the post-processing per cell type on the first cache only;
3. :func:`score_cache` renders the held-out cache with the model's own parameters ("before")
   and with the tuned ones ("after") and scores every image with the competition metric,
   with its error breakdown (:mod:`kit.error_analysis`).

The held-out images therefore choose nothing: not the parameters, not whether to tune.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kit import metric
from kit.atomic import up_to_date
from kit.error_analysis import ErrorCounts, image_errors

__all__ = ["ensure_cache", "score_cache", "predictions", "HeldOutScores", "cached_ids"]


def cached_ids(cache_dir) -> list[str] | None:
    """The image ids of a finished cache (None when there is no finished cache there)."""
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        return None
    try:
        return [i["id"] for i in json.loads(path.read_text())["images"]]
    except (ValueError, KeyError, TypeError):
        return None


def ensure_cache(model_dir, records: Sequence, cache_dir, progress: bool = True) -> tuple[Path, bool]:
    """The cache of ``model_dir`` over ``records`` in ``cache_dir``, built unless a finished
    cache of exactly these ids (in order) is there and newer than the model's ``model.json``.
    The folder's own ``tuned.yaml`` is not applied: the cache's "before" is the trained model.
    Returns ``(cache_dir, built)``."""
    from kit.tuning import build_cache

    cache_dir = Path(cache_dir)
    ids = [r.id for r in records]
    index = cache_dir / "cache.json"
    model_json = Path(model_dir) / "model.json"
    if cached_ids(cache_dir) == ids and up_to_date(index, model_json):
        return cache_dir, False
    if index.exists():
        index.unlink()  # an outdated index never outlives the rebuild's failure
    build_cache(model_dir, records, cache_dir, progress=progress, tuned=False)
    return cache_dir, True


def tune_on_cache(cache_dir, gt, tuned_yaml, n_jobs: int = 1, log=None):
    """Tune the post-processing per cell type on a cache of validation images
    (:func:`kit.tuning.search`) and write ``tuned_yaml`` (+ its ``.md`` table); returns the
    :class:`kit.tuning.SearchResult`. ``gt``: the train.csv holding their ground truth;
    ``log``: a ``str -> None`` for the search's progress lines (default: silent)."""
    from kit.tuning import load_cache, search, write_outputs

    result = search(cache_dir, gt, n_jobs=n_jobs, log=log or (lambda message: None))
    write_outputs(tuned_yaml, load_cache(cache_dir), result, cache_dir, gt)
    return result


@dataclass
class HeldOutScores:
    """Per-image results of one rendering of a cache: scores, error counts, seconds."""
    scores: list                         # kit.metric.ImageScore, cache order
    errors: dict                         # id -> ErrorCounts
    render_seconds: float                # post-processing seconds, summed over images
    network_seconds: float               # the cache's raw-output seconds, summed
    params: dict = field(default_factory=dict)   # cell type -> the parameters rendered

    @property
    def summary(self) -> metric.Summary:
        return metric.summarize(self.scores)

    def errors_by_cell_type(self) -> dict[str, ErrorCounts]:
        out: dict[str, ErrorCounts] = {}
        for s in self.scores:
            out[s.cell_type] = out.get(s.cell_type, ErrorCounts()) + self.errors[s.id]
        return out

    def seconds_per_image(self) -> float:
        """Inference seconds per image: network (raw output) + post-processing."""
        return (self.network_seconds + self.render_seconds) / max(len(self.scores), 1)


def _evaluate(cache_dir: str, meta: dict, gt: tuple, image_id: str, cell_type: str,
              params: dict):
    """Worker task: (ImageScore, ErrorCounts, post-processing seconds) of one cached image;
    ``gt`` = (its GT RLEs, its (H, W) shape)."""
    from kit.rle import encode_labels
    from kit.tuning import render

    rles, shape = gt
    t0 = time.perf_counter()
    labels = render(cache_dir, meta, image_id, cell_type, params)
    seconds = time.perf_counter() - t0
    pred = encode_labels(labels)
    score = metric.image_score(list(rles), labels, shape, id=image_id, cell_type=cell_type)
    return score, image_errors(rles, pred, shape), seconds


def score_cache(cache_dir, gt_records: Sequence, params_of: Callable[[str], dict] | None = None,
                n_jobs: int = 1) -> HeldOutScores:
    """Render every image of a cache with ``params_of(cell_type)`` (default: the cached
    model's own parameters) and score it against ``gt_records`` (records with ``rles``).
    Predictions are not kept (memory stays flat): :func:`predictions` renders a few again."""
    from joblib import Parallel, delayed

    from kit.tuning import default_params, load_cache

    cache_dir = Path(cache_dir)
    meta = load_cache(cache_dir)
    gt = {r.id: (tuple(r.rles), r.shape) for r in gt_records}
    missing = [i["id"] for i in meta["images"] if i["id"] not in gt]
    if missing:
        raise ValueError(f"{cache_dir}: no ground truth for {len(missing)} cached image(s), "
                         f"e.g. {missing[:3]}")
    params = {}
    for i in meta["images"]:
        ct = i["cell_type"]
        if ct not in params:
            params[ct] = dict(params_of(ct)) if params_of is not None else default_params(meta, ct)
    tasks = [(i["id"], i["cell_type"]) for i in meta["images"]]
    results = Parallel(n_jobs=n_jobs)(
        delayed(_evaluate)(str(cache_dir), meta, gt[k], k, ct, params[ct]) for k, ct in tasks)
    scores, errors, seconds = [], {}, 0.0
    for (k, _), (score, err, s) in zip(tasks, results):
        scores.append(score)
        errors[k] = err
        seconds += s
    return HeldOutScores(scores, errors, seconds, float(meta.get("seconds", 0.0)), params)


def predictions(cache_dir, image_ids: Sequence[str], params: Mapping[str, dict]) -> dict[str, list]:
    """``{id: RLE list}`` of a few cached images rendered with ``params[cell_type]`` (as
    :attr:`HeldOutScores.params`), e.g. for figures."""
    from kit.rle import encode_labels
    from kit.tuning import load_cache, render

    meta = load_cache(cache_dir)
    types = {i["id"]: i["cell_type"] for i in meta["images"]}
    return {k: encode_labels(render(str(cache_dir), meta, k, types[k], dict(params[types[k]])))
            for k in image_ids}
