"""Ensembles as a :class:`kit.models.family.ModelFamily`.

An ensemble is assembled (``python -m kit.ensemble``), not trained. Its tuning cache holds,
per image, every member on every TTA view mapped back to the image: detections for members
whose family fuses detections, label images for the others (rendered with the member's own
settings, e.g. its ``tuned.yaml``). Tunable per cell type: ``wbf_iou``, ``wbf_skip`` and the
post-processing of the fused detections (with detection members), ``min_support`` /
``pixel_vote`` of the instance vote (with >= 2 voters) and one weight per member ``w0``, ``w1``,
... (with >= 2 members).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kit import CELL_TYPES
from kit import config as kconfig
from kit.memo import BoundedMemo
from kit.models.ensemble.config import EnsembleConfig, EnsembleTypeParams
from kit.models.ensemble.fusion import fuse_detections
from kit.models.ensemble.model import EnsembleModel, combine, make_ensemble
from kit.models.ensemble.tta import TRANSFORMS, tta_apply, tta_invert_detections, tta_invert_labels
from kit.models.family import ModelFamily
from kit.postprocess import TYPE_PARAM_GRIDS, PostprocessConfig

PP_KEYS = ("score", "nms", "pixel", "min_area", "max_area")
ENS_KEYS = ("wbf_iou", "wbf_skip", "min_support", "pixel_vote", "match_iou")
_FUSED = BoundedMemo(32)   # fused detections, by cached image and fusion parameters


class EnsembleFamily(ModelFamily):
    name = "ensemble"
    trainable = False
    views = TRANSFORMS   # the TTA views an ensemble folder may name
    grids = {
        **TYPE_PARAM_GRIDS,
        "wbf_iou": (0.4, 0.5, 0.55, 0.6, 0.7, 0.8),
        "wbf_skip": (0.0, 0.05, 0.1, 0.2, 0.3),
        "min_support": (0.2, 0.34, 0.5, 0.67, 0.75, 1.0),
        "pixel_vote": (0.25, 0.34, 0.5, 0.67, 0.75, 1.0),
        "weight": (0.0, 0.5, 1.0, 2.0),   # of every member: w0, w1, ...
    }
    tuned_keys = ("postprocess",) + CELL_TYPES

    def fit(self, train, val, out: Path, options, log=None):
        raise ValueError("an ensemble is not trained: make one from trained model folders with "
                         "python -m kit.ensemble --out DIR --member MODEL_DIR[:WEIGHT] ...")

    def make(self, out: Path, members, views=("id",)) -> Path:
        """Write an ensemble folder of ``members`` (``(model folder, weight)`` pairs) with the
        TTA ``views`` (:func:`kit.models.ensemble.make_ensemble`); returns ``out``."""
        return make_ensemble(out, members, views)

    def load(self, folder: Path) -> EnsembleModel:
        return EnsembleModel.load(folder)

    # -- tuning -----------------------------------------------------------------------------

    def tuning_state(self, model: EnsembleModel) -> dict:
        return {"config": kconfig.to_dict(model.config), "fusions": model.fusions}

    def cache_sources(self, model: EnsembleModel) -> list[dict]:
        return _sources(self.tuning_state(model))

    def raw_outputs(self, model: EnsembleModel, image: np.ndarray, cell_type: str) -> list:
        out = []
        for s in self.cache_sources(model):
            m, fam = model.members[s["member"]], model.families[s["member"]]
            view = tta_apply(s["view"], image)
            if s["format"] == "detections":
                out.append(tta_invert_detections(s["view"], fam.predict_raw(m, view, cell_type)))
            else:
                out.append(tta_invert_labels(s["view"], fam.predict(m, view, cell_type)))
        return out

    def tunable_params(self, state: dict) -> list[str]:
        fusions, n_views = state["fusions"], len(state["config"]["tta"])
        out = []
        if "detections" in fusions:
            out += list(TYPE_PARAM_GRIDS) + ["wbf_iou", "wbf_skip"]
        n_voters = (1 if "detections" in fusions else 0) + fusions.count("labels") * n_views
        if n_voters > 1:
            out += ["min_support", "pixel_vote"]
        if len(fusions) > 1:
            out += [f"w{i}" for i in range(len(fusions))]
        return out

    def grid_name(self, param: str) -> str:
        return "weight" if param[:1] == "w" and param[1:].isdigit() else param

    def current_params(self, state: dict, cell_type: str) -> dict:
        cfg = state["config"]
        tp = cfg[cell_type]
        out = {k: tp[k] for k in ENS_KEYS}
        out.update({k: cfg["postprocess"][cell_type][k] for k in PP_KEYS})
        weights = tp["weights"] or [m["weight"] for m in cfg["members"]]
        out.update({f"w{i}": float(w) for i, w in enumerate(weights)})
        return out

    def valid(self, params: dict, state: dict, cell_type: str) -> bool:
        ws = [v for k, v in params.items() if self.grid_name(k) == "weight"]
        return params["min_area"] <= params["max_area"] and sum(ws) > 0

    def render(self, raws: list, state: dict, cell_type: str, params: dict, key=None) -> np.ndarray:
        cfg = state["config"]
        sources = _sources(state)
        n_members = len(cfg["members"])
        weights = [float(params[f"w{i}"]) for i in range(n_members)]
        if sum(weights) <= 0:
            raise ValueError(f"all member weights are 0: {weights}")
        n_views = len(cfg["tta"])
        dets, labels, det_ids = [], [], []
        for k, (s, raw) in enumerate(zip(sources, raws)):
            w = weights[s["member"]] / n_views
            if w <= 0:
                continue
            if s["format"] == "detections":
                dets.append((raw, w))
                det_ids.append((k, w))
            else:
                labels.append((raw, w))
        etp = EnsembleTypeParams(weights=tuple(weights), **{k: params[k] for k in ENS_KEYS})
        pp = kconfig.from_dict(PostprocessConfig, cfg["postprocess"], "tuning state: postprocess")
        pp = pp.with_params(cell_type, **{k: params[k] for k in PP_KEYS})
        conf = cfg.get("conf_type", "avg")
        fused = None
        if dets and key is not None:   # the fusion depends on few parameters: reuse it
            fkey = (key, etp.wbf_iou, etp.wbf_skip, conf, tuple(det_ids))
            fused = _FUSED.get(fkey, lambda: fuse_detections(
                [d for d, _ in dets], [w for _, w in dets], etp.wbf_iou, etp.wbf_skip, conf))
        return combine(dets, labels, cell_type, etp, pp, conf, fused=fused)

    def tuned_document(self, state: dict, best: dict) -> dict:
        cfg = state["config"]
        pp = kconfig.from_dict(PostprocessConfig, cfg["postprocess"], "tuning state: postprocess")
        doc = {"model_type": self.name}
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

    def apply_tuned(self, model: EnsembleModel, doc: dict, where: str) -> None:
        merged = {**kconfig.to_dict(model.config),
                  **{k: v for k, v in doc.items() if k != "model_type"}}
        model.config = kconfig.from_dict(EnsembleConfig, merged, where)


def _sources(state: dict) -> list[dict]:
    """The cached raws of one image: every member on every view, views outermost."""
    return [{"member": i, "view": v, "format": f}
            for v in state["config"]["tta"] for i, f in enumerate(state["fusions"])]


FAMILY = EnsembleFamily()
