"""detectron2's Mask R-CNN as a :class:`kit.models.family.ModelFamily` (type ``detectron2``).

Raw output: :class:`kit.postprocess.Detections` like the torchvision Mask R-CNN's, so the
post-processing, its tuning (the same per-cell-type ``score`` / ``nms`` / ``pixel`` /
``min_area``, a tuned YAML of the same shape), ensembles (weighted box fusion), TTA,
``kit.predict``, ``kit.cv`` and the bundle treat both engines alike. Only training, loading and
the network's forward pass are detectron2's.
"""
from __future__ import annotations

from pathlib import Path

from kit.models.d2.config import load_config
from kit.models.family import FitOptions
from kit.models.maskrcnn.family import MaskRCNNFamily


class Detectron2Family(MaskRCNNFamily):
    name = "detectron2"

    def load_config(self, path):
        return load_config(path)

    def fit(self, train, val, out: Path, options: FitOptions, log=None):
        from kit.models.d2.train import fit

        return fit(train, val, out, options, log)

    def memory_plan(self, config, train, val, livecell=()):
        from kit.models.d2.memory import memory_plan

        return memory_plan(config, train, val, livecell)

    def load(self, folder: Path):
        from kit.models.d2.model import Detectron2Model

        return Detectron2Model.load(folder)


FAMILY = Detectron2Family()
