"""The ensemble model folder: every member on every TTA view, fused per image
(:func:`combine`), and :func:`make_ensemble` to write one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kit import check_cell_type
from kit.atomic import atomic_open
from kit.models.ensemble.config import EnsembleConfig, EnsembleTypeParams, Member
from kit.models.ensemble.fusion import fuse_detections
from kit.models.ensemble.tta import tta_apply, tta_invert_detections, tta_invert_labels
from kit.models.ensemble.vote import _compact, vote_labels
from kit.postprocess import Detections, PostprocessConfig


def combine(det_sources: Sequence[tuple[Detections, float]],
            label_sources: Sequence[tuple[np.ndarray, float]], cell_type: str | None,
            params: EnsembleTypeParams, postprocess_config: PostprocessConfig,
            conf_type: str = "avg", fused: Detections | None = None) -> np.ndarray:
    """One image's label image from weighted detection sources and weighted label sources.

    Detection sources are fused (:func:`fuse_detections`, ``params.wbf_iou`` /
    ``params.wbf_skip``) and painted (:func:`kit.postprocess.postprocess` with ``cell_type``;
    None = the class vote); that label image votes with the sum of their weights, each label
    source with its own (:func:`vote_labels`). Sources of weight 0 are ignored. ``fused``:
    the fusion of ``det_sources``, when the caller already has it (kit.tune reuses it).
    """
    from kit.postprocess import postprocess

    det_sources = [(d, float(w)) for d, w in det_sources if w > 0]
    voters = [(lab, float(w)) for lab, w in label_sources if w > 0]
    if det_sources:
        if fused is None:
            fused = fuse_detections([d for d, _ in det_sources], [w for _, w in det_sources],
                                    params.wbf_iou, params.wbf_skip, conf_type)
        painted = postprocess(fused, cell_type, postprocess_config)
        voters.insert(0, (painted, sum(w for _, w in det_sources)))
    if not voters:
        raise ValueError("combine: no source with a positive weight")
    if len(voters) == 1:
        return _compact(voters[0][0])[0]
    return vote_labels([v for v, _ in voters], [w for _, w in voters], params.min_support,
                       params.pixel_vote, params.match_iou)


class EnsembleModel:
    """An ensemble model folder: members are model folders, fused per image (module doc)."""

    TYPE = "ensemble"

    def __init__(self, config: EnsembleConfig, members: Sequence, types: Sequence[str],
                 folder: Path | None = None):
        """``members``: loaded models; ``types``: their model types (registered families)."""
        from kit.models.registry import family

        if len(members) != len(config.members) or len(types) != len(members):
            raise ValueError(f"{len(config.members)} member configs, {len(members)} models, "
                             f"{len(types)} types")
        self.config = config
        self.members = list(members)
        self.types = list(types)
        self.families = [family(t) for t in self.types]
        self.folder = folder

    @property
    def fusions(self) -> list[str]:
        """Per member: ``"detections"`` (fused by WBF) or ``"labels"`` (voting label image)."""
        return [f.fusion for f in self.families]

    @staticmethod
    def member_path(folder, member: Member) -> Path:
        return Path(folder) / member.path

    @classmethod
    def load(cls, folder) -> "EnsembleModel":
        from kit import config as kconfig
        from kit.models import load_model, model_type, read_model_json

        folder = Path(folder)
        path, doc = read_model_json(folder, cls.TYPE)
        cfg = kconfig.from_dict(EnsembleConfig, doc.get("config", {}), f"{path}: config")
        models, types = [], []
        for i, m in enumerate(cfg.members):
            mdir = cls.member_path(folder, m)
            if not (mdir / "model.json").is_file():
                raise FileNotFoundError(f"{path}: config.members[{i}].path: no model folder at {mdir}")
            types.append(model_type(mdir))
            models.append(load_model(mdir))
        return cls(cfg, models, types, folder)

    def save(self, folder) -> Path:
        from kit import config as kconfig

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"type": self.TYPE, "config": kconfig.to_dict(self.config)}
        with atomic_open(folder / "model.json") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        return folder

    def sources(self, image: np.ndarray, cell_type: str | None, weights=None,
                skip: float | None = None):
        """``(detection sources, label sources)`` of one image: every member on every TTA view,
        mapped back to the image's frame, each as ``(output, weight)``; a member's weight is
        split evenly over the views. ``skip``: detections below it are not computed."""
        if weights is None:
            weights = (self.config.member_weights(cell_type) if cell_type is not None
                       else tuple(m.weight for m in self.config.members))
        views = self.config.tta
        dets, labels = [], []
        for name in views:
            view = tta_apply(name, image)
            for model, fam, w in zip(self.members, self.families, weights):
                if w <= 0:
                    continue
                if fam.fusion == "detections":
                    raw = fam.predict_raw(model, view, cell_type, min_score=skip if skip else None)
                    dets.append((tta_invert_detections(name, raw), w / len(views)))
                else:
                    if cell_type is None:
                        raise ValueError("an ensemble with label-image members needs the cell type")
                    labels.append((tta_invert_labels(name, fam.predict(model, view, cell_type)),
                                   w / len(views)))
        return dets, labels

    def predict(self, image: np.ndarray, cell_type: str | None = None) -> np.ndarray:
        """(H, W) int32 label image: the fusion of every member on every TTA view."""
        if cell_type is not None:
            check_cell_type(cell_type)
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
        p = self.config.params(cell_type) if cell_type else EnsembleTypeParams()
        dets, labels = self.sources(image, cell_type, skip=p.wbf_skip)
        if not dets and not labels:
            return np.zeros(image.shape, np.int32)
        return combine(dets, labels, cell_type, p, self.config.postprocess, self.config.conf_type)


def make_ensemble(out, members: Sequence[tuple[str, float]], tta: Sequence[str] = ("id",),
                  postprocess: PostprocessConfig | None = None) -> Path:
    """Write an ensemble folder. Member paths are stored relative to ``out`` when possible;
    the post-processing of fused detections defaults to the first detection member's (with its
    ``tuned.yaml`` if it has one); the first member's ``celltype.joblib`` is copied."""
    import shutil

    from kit import config as kconfig
    from kit.models import load_model, model_type
    from kit.models.registry import family

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mems = []
    for path, weight in members:
        p = Path(path)
        model_type(p)  # a model folder of a known type
        try:
            rel = os.path.relpath(p.resolve(), out.resolve())
        except ValueError:  # another drive
            rel = str(p.resolve())
        mems.append(Member(rel, float(weight)))
        fam = family(model_type(p))
        if postprocess is None and fam.fusion == "detections":
            postprocess = fam.detection_postprocess(load_model(p))
    cfg = EnsembleConfig(members=tuple(mems), tta=tuple(tta),
                         postprocess=postprocess or PostprocessConfig())
    for path, _ in members:
        src = Path(path) / "celltype.joblib"
        if src.is_file():
            shutil.copyfile(src, out / "celltype.joblib")
            break
    doc = {"type": EnsembleModel.TYPE, "config": kconfig.to_dict(cfg)}
    with atomic_open(out / "model.json") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
    return out
