"""The Mask R-CNN config: ``model`` (network), ``train`` (schedule, augmentation, stages) and
``postprocess`` sections of one YAML; defaults and where each number came from in
``kit/configs/maskrcnn.yaml``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kit import CELL_TYPES, check_cell_type_counts
from kit.models.precision import AmpSetting
from kit.postprocess import PostprocessConfig

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "maskrcnn.yaml"

ONE_CLASS = ("cell",)
"""``model.classes: [cell]``: every instance of every cell type is one class; the image's cell
type (which post-processing parameters paint it) is then given (``cell_type: given``), and
the model's detections carry that type (:class:`kit.postprocess.Detections` over
:data:`kit.CELL_TYPES`), so ensembles fuse them with any other member's."""


@dataclass(frozen=True)
class ModelConfig:
    """Network settings; numbers and their sources in ``kit/configs/maskrcnn.yaml``."""

    classes: tuple[str, ...] = CELL_TYPES   # network class k + 1 = classes[k] (0 = background);
                                            # ONE_CLASS = one class for every cell type
    backbone_depth: Literal[18, 34, 50, 101] = 50
    fpn_channels: int = 256                 # FPN levels and mask head; 256 = torchvision/detectron2
    mask_pool_size: int = 14                # ROIAlign size of the mask head; its masks are twice that
    norm: Literal["bn", "gn", "frozen_bn"] = "bn"
    trainable_backbone_layers: int = 5
    stride_in_1x1: bool = False
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_rule: Literal["torchvision", "detectron2"] = "torchvision"
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 1000
    roi_align_aligned: bool = True
    roi_sampling_ratio: int = 0
    train_min_sizes: tuple[int, ...] = (600, 640, 680, 720, 760, 800)
    train_max_size: int = 1333
    test_min_size: int = 800
    test_max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    mask_chunk: int = 200   # ROIs per mask-head forward at inference (bounds CPU memory)

    def __post_init__(self):
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and unique, got {list(self.classes)}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per FPN level P2-P6 (5), got "
                             f"{list(self.anchor_sizes)}")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"aspect_ratios must be positive, got {list(self.aspect_ratios)}")
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ValueError(f"trainable_backbone_layers must be in [0, 5], got "
                             f"{self.trainable_backbone_layers}")
        if not 16 <= self.fpn_channels <= 512:
            raise ValueError(f"fpn_channels must be in [16, 512], got {self.fpn_channels!r}")
        if not 7 <= self.mask_pool_size <= 56:
            raise ValueError(f"mask_pool_size must be in [7, 56], got {self.mask_pool_size!r}")
        if self.stride_in_1x1 and self.backbone_depth < 50:
            raise ValueError("stride_in_1x1 applies to bottleneck ResNets (backbone_depth >= 50)")
        if not self.train_min_sizes or min(self.train_min_sizes) < 32:
            raise ValueError(f"train_min_sizes must be >= 32, got {list(self.train_min_sizes)}")
        for name in ("rpn_nms_thresh", "box_positive_fraction", "box_score_thresh", "box_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {list(self.image_std)}")


@dataclass(frozen=True)
class TrainConfig:
    """Training loop settings (:mod:`kit.models.maskrcnn.train`)."""

    epochs: int = 24
    livecell_epochs: int = 6
    livecell_labels: Literal["single", "cell_line"] = "cell_line"
    batch_size: int = 2                # images per optimizer step, over every process (global batch)
    accumulate: int = 1                # micro batches per step and process (gradient accumulation)
    sync_bn: bool = False              # BatchNorm statistics over every process (CUDA, several processes)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    steps: tuple[float, ...] = (0.75, 0.9)  # "step": x0.1 at these fractions of the stage
    grad_clip: float = 10.0
    amp: bool = True                   # mixed precision on CUDA (float16 + loss scaler)
    amp_cpu: AmpSetting = False        # bfloat16 autocast on CPU (the AMP code path without a GPU);
                                       # auto = where the CPU has it natively (kit.models.precision)
    crop: int = 0                      # square random crop (network pixels); 0 = whole image
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    repeat: dict[str, int] = field(default_factory=dict)  # cell type -> copies of each of its
                                       # images in a pass of the Sartorius stage (missing = 1)
    specialize: dict[str, int] = field(default_factory=dict)  # cell type -> passes of a specialist
                                       # stage: the best all-type weights fine-tuned on that type's
                                       # images alone, used for images of that type
    specialize_lr: float = 0.0         # the specialist stages' peak learning rate (0 = lr)
    specialize_share: float = 0.15     # share of --time-budget kept for the specialist stages
    eval_every: int = 1                # epochs between validation evaluations
    eval_max_images: int = 0           # 0 = the whole held-out fold
    max_iters_per_epoch: int = 0       # 0 = one pass over the images
    max_nonfinite: int = 20            # consecutive non-finite losses before giving up
    num_workers: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "livecell_epochs", "crop", "eval_max_images", "max_iters_per_epoch",
                     "num_workers", "warmup_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("batch_size", "accumulate", "eval_every", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.crop and self.crop < 32:
            raise ValueError(f"crop must be 0 or >= 32, got {self.crop!r}")
        for name in ("repeat", "specialize"):  # cell type -> a count >= 1
            check_cell_type_counts(name, getattr(self, name))
        if self.specialize_lr < 0:
            raise ValueError(f"specialize_lr must be >= 0 (0 = lr), got {self.specialize_lr!r}")
        if not 0.0 < self.specialize_share < 1.0:
            raise ValueError(f"specialize_share must be in (0, 1), got {self.specialize_share!r}")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of accumulate "
                             f"{self.accumulate}")


@dataclass(frozen=True)
class MaskRCNNConfig:
    """The whole config file. ``cell_type``: ``vote`` = the image's type is the majority class
    of the detections (the seed); ``given`` = the type passed to ``predict`` (true types in OOF,
    the ``celltype.joblib`` classifier in ``kit.predict``); ``given`` is required with
    ``model.classes: [cell]`` (:data:`ONE_CLASS`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    cell_type: Literal["vote", "given"] = "vote"

    def __post_init__(self):
        if tuple(self.model.classes) == ONE_CLASS and self.cell_type != "given":
            raise ValueError("model.classes [cell] (one class for every cell type) has no class "
                             "vote to take the image's cell type from: set cell_type: given")


def load_config(path=None) -> MaskRCNNConfig:
    """The config in ``path`` (default: ``kit/configs/maskrcnn.yaml``); unknown keys are errors."""
    from kit import config as kconfig

    return kconfig.load(MaskRCNNConfig, DEFAULT_CONFIG_FILE if path is None else path)
