"""The ensemble folder's config: members with weights, TTA views, the post-processing of fused
detections and per-cell-type fusion parameters (tuned by ``python -m kit.tune``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kit import CELL_TYPES, check_cell_type
from kit.models.ensemble.tta import _check_transform
from kit.postprocess import PostprocessConfig


@dataclass(frozen=True)
class Member:
    """One member model folder (path relative to the ensemble folder, or absolute)."""

    path: str
    weight: float = 1.0

    def __post_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight!r}")


@dataclass(frozen=True)
class EnsembleTypeParams:
    """Fusion parameters of one cell type (tuned by ``python -m kit.tune``)."""

    weights: tuple[float, ...] = ()  # one per member, replacing the members' weights; () = theirs
    wbf_iou: float = 0.55       # ensemble-boxes' default iou_thr
    wbf_skip: float = 0.0       # ensemble-boxes' default skip_box_thr
    min_support: float = 0.5    # cluster kept when its voters weigh >= this x total weight
    pixel_vote: float = 0.5     # pixel kept when covered by >= this x the cluster's weight
    match_iou: float = 0.5      # instances of two voters match when IoU > this

    def __post_init__(self):
        for name in ("wbf_iou", "wbf_skip", "min_support", "pixel_vote", "match_iou"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(self.weights)}")


@dataclass(frozen=True)
class EnsembleConfig:
    """``model.json["config"]`` of an ensemble folder."""

    members: tuple[Member, ...] = ()
    tta: tuple[str, ...] = ("id",)
    conf_type: Literal["avg", "max"] = "avg"
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)  # fused detections
    shsy5y: EnsembleTypeParams = field(default_factory=EnsembleTypeParams)
    astro: EnsembleTypeParams = field(default_factory=EnsembleTypeParams)
    cort: EnsembleTypeParams = field(default_factory=EnsembleTypeParams)

    def __post_init__(self):
        if not self.members:
            raise ValueError("members: an ensemble needs at least one member")
        if not self.tta or len(set(self.tta)) != len(self.tta):
            raise ValueError(f"tta must be a non-empty list of distinct transforms, got {list(self.tta)}")
        for name in self.tta:
            _check_transform(name)
        for ct in CELL_TYPES:
            w = getattr(self, ct).weights
            if w and len(w) != len(self.members):
                raise ValueError(f"{ct}.weights has {len(w)} values for {len(self.members)} members")

    def params(self, cell_type: str) -> EnsembleTypeParams:
        check_cell_type(cell_type)
        return getattr(self, cell_type)

    def member_weights(self, cell_type: str) -> tuple[float, ...]:
        w = self.params(cell_type).weights
        return tuple(w) if w else tuple(m.weight for m in self.members)
