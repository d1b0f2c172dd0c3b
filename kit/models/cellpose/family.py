"""Cellpose as a :class:`kit.models.family.ModelFamily`.

Raw output (format ``arrays``): :meth:`CellposeSegmenter.predict_raw`'s flows, cell
probability logits, style vector and diameter, before any threshold. Tunable per cell type:
``cellprob_threshold``, ``flow_threshold`` (0 = the flow check off) and ``min_size``. The
diameter is not searched: a new diameter rescales the network's input, so it needs the network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kit import CELL_TYPES
from kit import config as kconfig
from kit.models.cellpose.config import CellTypeConfig, load_config
from kit.models.cellpose.model import CellposeSegmenter, labels_from_raw
from kit.models.family import FitOptions, ModelFamily, cell_type_sections


class CellposeFamily(ModelFamily):
    name = "cellpose"
    distributed = True
    raw_format = "arrays"
    grids = {
        "cellprob_threshold": (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0),
        "flow_threshold": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        "min_size": (0, 15, 30, 60),
    }
    tuned_keys = ("cell_types",)

    def load_config(self, path):
        return load_config(path)

    def wants_validation(self, config) -> bool:
        # a monitoring loss (nothing is selected on it); the specialists are kept or dropped on it
        return config.train.eval_every > 0 or bool(config.train.specialize)

    def fit(self, train, val, out: Path, options: FitOptions, log=None) -> CellposeSegmenter:
        from kit.models.cellpose.train import fit

        return fit(train, val, out, options, log)

    def memory_plan(self, config, train, val, livecell=()):
        from kit.models.cellpose.memory import memory_plan

        return memory_plan(config, train, val, livecell)

    def load(self, folder: Path) -> CellposeSegmenter:
        return CellposeSegmenter.load(folder)

    def predict_raw(self, model, image: np.ndarray, cell_type: str, min_score=None) -> dict:
        return model.predict_raw(image, cell_type)

    def postprocess_raw(self, raw, cell_type: str, params: dict, state: dict, key=None) -> np.ndarray:
        full = {**state["cell_types"][cell_type], **params}
        return labels_from_raw(raw, full, state["max_size_fraction"], key=key)

    def render(self, raws: list, state: dict, cell_type: str, params: dict, key=None) -> np.ndarray:
        """As the protocol's, with the flow-following step memoised per cached image (``key``):
        candidates that differ only in ``flow_threshold`` / ``min_size`` share it."""
        return self.postprocess_raw(raws[0], cell_type, params, state, key=key)

    def tuning_state(self, model: CellposeSegmenter) -> dict:
        return {"cell_types": {ct: kconfig.to_dict(model.config.cell_types[ct]) for ct in CELL_TYPES},
                "max_size_fraction": float(model.config.inference.max_size_fraction)}

    def current_params(self, state: dict, cell_type: str) -> dict:
        return {k: state["cell_types"][cell_type][k] for k in self.grids}

    def tuned_document(self, state: dict, best: dict) -> dict:
        cts = {ct: {k: best.get(ct, state["cell_types"][ct])[k] for k in self.grids}
               for ct in CELL_TYPES}
        return {"model_type": self.name, "cell_types": cts}

    def apply_tuned(self, model: CellposeSegmenter, doc: dict, where: str) -> None:
        import dataclasses

        cts = dict(model.config.cell_types)
        for ct, upd in cell_type_sections(doc, "cell_types", where).items():
            cts[ct] = kconfig.from_dict(CellTypeConfig, {**kconfig.to_dict(cts[ct]), **upd},
                                        f"{where}: cell_types.{ct}")
        model.config = dataclasses.replace(model.config, cell_types=cts)


FAMILY = CellposeFamily()
