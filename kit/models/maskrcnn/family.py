"""Mask R-CNN as a :class:`kit.models.family.ModelFamily`.

Raw output (format ``detections``): :class:`kit.postprocess.Detections` (boxes, scores,
classes, 28x28 mask probabilities) before any threshold; ensembles fuse members of this family
by weighted box fusion. Tunable per cell type: the :class:`kit.postprocess.TypeParams`
``score``, ``nms``, ``pixel`` and ``min_area``. A search renders every image with its true
cell type, so a tuned YAML also sets ``cell_type: given``: the model then paints with the type
it is given instead of its detections' class vote.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kit import config as kconfig
from kit.models.family import FitOptions, ModelFamily
from kit.models.maskrcnn.config import load_config
from kit.models.maskrcnn.model import MaskRCNNModel
from kit.postprocess import TYPE_PARAM_GRIDS, PostprocessConfig, postprocess


class MaskRCNNFamily(ModelFamily):
    name = "maskrcnn"
    distributed = True
    fusion = "detections"
    raw_format = "detections"
    grids = TYPE_PARAM_GRIDS
    tuned_keys = ("cell_type", "postprocess")

    def load_config(self, path):
        return load_config(path)

    def wants_validation(self, config) -> bool:
        return True   # the best validation epoch is the model (eval_every >= 1)

    def fit(self, train, val, out: Path, options: FitOptions, log=None) -> MaskRCNNModel:
        from kit.models.maskrcnn.train import fit

        return fit(train, val, out, options, log)

    def memory_plan(self, config, train, val, livecell=()):
        from kit.models.maskrcnn.memory import memory_plan

        return memory_plan(config, train, val, livecell)

    def load(self, folder: Path) -> MaskRCNNModel:
        return MaskRCNNModel.load(folder)

    def predict_raw(self, model, image: np.ndarray, cell_type: str, min_score=None):
        return model.predict_raw(image, score_thresh=min_score, cell_type=cell_type)

    def postprocess_raw(self, raw, cell_type: str, params: dict, state: dict) -> np.ndarray:
        pp = kconfig.from_dict(PostprocessConfig, state["postprocess"], "tuning state: postprocess")
        return postprocess(raw, cell_type, pp.with_params(cell_type, **params))

    def detection_postprocess(self, model) -> PostprocessConfig:
        return model.config.postprocess

    def tuning_state(self, model: MaskRCNNModel) -> dict:
        return {"postprocess": kconfig.to_dict(model.config.postprocess),
                "cell_type": model.config.cell_type}

    def current_params(self, state: dict, cell_type: str) -> dict:
        return {k: state["postprocess"][cell_type][k] for k in self.grids}

    def valid(self, params: dict, state: dict, cell_type: str) -> bool:
        return params["min_area"] <= state["postprocess"][cell_type]["max_area"]

    def tuned_document(self, state: dict, best: dict) -> dict:
        pp = kconfig.from_dict(PostprocessConfig, state["postprocess"], "tuning state: postprocess")
        for ct, p in best.items():
            pp = pp.with_params(ct, **p)
        # tuned per true cell type: the model must use the given type (kit.predict: the
        # --cell-types file or the folder's classifier), not its detections' class vote
        return {"model_type": self.name, "cell_type": "given", "postprocess": kconfig.to_dict(pp)}

    def apply_tuned(self, model: MaskRCNNModel, doc: dict, where: str) -> None:
        if "postprocess" in doc:
            pp = kconfig.from_dict(PostprocessConfig, doc["postprocess"], f"{where}: postprocess")
            model.config = dataclasses.replace(model.config, postprocess=pp)
        if "cell_type" in doc:
            if doc["cell_type"] not in ("vote", "given"):
                raise ValueError(f"{where}: cell_type must be 'vote' or 'given', got {doc['cell_type']!r}")
            model.config = dataclasses.replace(model.config, cell_type=doc["cell_type"])


FAMILY = MaskRCNNFamily()
