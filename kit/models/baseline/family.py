"""The baseline as a :class:`kit.models.family.ModelFamily`.

Nothing is learned by gradient: ``fit`` writes the default parameters (tune them on training
folds with ``kit.tune``). Its raw output is the image itself (``{"image": (H, W) uint8}``), so
a tuning cache holds the images and the search re-runs the classical pipeline with candidate
parameters of :class:`~kit.models.baseline.model.BaselineParams`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kit import CELL_TYPES
from kit.models.baseline.model import BaselineModel, BaselineParams, predict_labels
from kit.models.family import FitOptions, ModelFamily, cell_type_sections


class BaselineFamily(ModelFamily):
    name = "baseline"
    raw_format = "arrays"
    grids = {
        "threshold_k": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5),
        "smooth_sigma": (1.0, 1.6, 2.0, 3.0, 4.0),
        "shrink": (0, 1, 2, 3, 4, 5),
        "min_distance": (3, 5, 8, 12, 20, 30),
        "dist_sigma": (0.0, 1.0, 2.0, 3.0, 5.0),
        "min_area": (15, 30, 50, 80, 120, 250),
    }
    tuned_keys = ("params",)

    def fit(self, train, val, out: Path, options: FitOptions, log=None) -> BaselineModel:
        self.load_config(options.config)
        model = BaselineModel()
        model.save(out)
        return model

    def load(self, folder: Path) -> BaselineModel:
        return BaselineModel.load(folder)

    def predict_raw(self, model, image: np.ndarray, cell_type: str, min_score=None) -> dict:
        return {"image": np.asarray(image, np.uint8)}

    def postprocess_raw(self, raw, cell_type: str, params: dict, state: dict) -> np.ndarray:
        full = {**state["params"][cell_type], **params}
        return predict_labels(raw["image"], cell_type, BaselineParams.from_dict(full))

    def tuning_state(self, model: BaselineModel) -> dict:
        return {"params": {ct: model.params[ct].to_dict() for ct in CELL_TYPES}}

    def current_params(self, state: dict, cell_type: str) -> dict:
        return {k: state["params"][cell_type][k] for k in self.grids}

    def tuned_document(self, state: dict, best: dict) -> dict:
        params = {ct: {**state["params"][ct], **best.get(ct, {})} for ct in CELL_TYPES}
        return {"model_type": self.name, "params": params}

    def apply_tuned(self, model: BaselineModel, doc: dict, where: str) -> None:
        for ct, upd in cell_type_sections(doc, "params", where).items():
            try:
                model.params[ct] = BaselineParams.from_dict({**model.params[ct].to_dict(), **upd})
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: params.{ct}: {e}") from None


FAMILY = BaselineFamily()
