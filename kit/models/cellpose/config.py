"""Cellpose config: the YAML sections (``diam_mean``, ``train``, ``size_model``, ``inference``,
``cell_types``), their checks, the names of the files of a Cellpose model folder, and the
renaming of keys written by older versions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kit import CELL_TYPES, check_cell_type_counts
from kit import config as _config
from kit.models.precision import AmpSetting

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cellpose.yaml"
WEIGHTS = "cellpose_net"
SIZE_MODEL = WEIGHTS + "_size.npy"  # cellpose's naming: <weights>_size.npy
CHECKPOINT = "checkpoint.pt"
EPOCH_LOG = "epochs.csv"
CONFIG_COPY = "config.yaml"
EPOCH_COLUMNS = ("epoch", "stage", "stage_epoch", "lr", "train_loss", "val_loss", "seconds", "n_crops")
SPECIALIST_KEYS = ("specialize", "specialize_lr", "specialize_share")


def specialist_weights(cell_type: str) -> str:
    """The file name of a cell type's specialist network in a model folder (cellpose's format,
    like :data:`WEIGHTS`)."""
    return f"{WEIGHTS}_{cell_type}"


CHANNELS = [0, 0]  # grayscale, no nuclear channel (the network still has cellpose's 2 inputs)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 500
    livecell_epochs: int = 0
    batch_size: int = 8                # crops per optimizer step, over every process (global batch)
    accumulate: int = 1                # micro batches per step and process (gradient accumulation)
    sync_bn: bool = False              # BatchNorm statistics over every process (CUDA, several processes)
    bsize: int = 224
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 0.005
    weight_decay: float = 1e-5
    momentum: float = 0.9
    warmup_epochs: int = 10
    scale_range: float = 0.5
    min_train_masks: int = 5
    nimg_per_epoch: int | None = None
    save_every: int = 10
    eval_every: int = 0
    bn_recalibration_crops: int = 64
    amp_cpu: AmpSetting = False        # bfloat16 autocast of the training steps on CPU (loss in float32);
                                       # auto = where the CPU has it natively (kit.models.precision)
    seed: int = 0
    specialize: dict[str, int] = field(default_factory=dict)  # cell type -> epochs of a specialist:
                                       # the final all-type network fine-tuned on that type's images
                                       # alone, used for images of that type (kit.models.cellpose.specialists)
    specialize_lr: float = 0.0         # the specialists' learning rate (0 = lr)
    specialize_share: float = 0.15     # share of --time-budget kept for the specialists

    def __post_init__(self):
        for name in ("epochs", "batch_size", "accumulate", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of accumulate "
                             f"{self.accumulate}")
        for name in ("livecell_epochs", "warmup_epochs", "min_train_masks", "eval_every",
                     "bn_recalibration_crops"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.bsize < 32 or self.bsize % 16:
            raise ValueError(f"bsize must be a multiple of 16 and >= 32, got {self.bsize!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.scale_range <= 2:
            raise ValueError(f"scale_range must be in [0, 2], got {self.scale_range!r}")
        if self.nimg_per_epoch is not None and self.nimg_per_epoch < 1:
            raise ValueError(f"nimg_per_epoch must be >= 1 or null, got {self.nimg_per_epoch!r}")
        check_cell_type_counts("specialize", self.specialize)
        if self.specialize_lr < 0:
            raise ValueError(f"specialize_lr must be >= 0 (0 = lr), got {self.specialize_lr!r}")
        if not 0.0 < self.specialize_share < 1.0:
            raise ValueError(f"specialize_share must be in (0, 1), got {self.specialize_share!r}")


@dataclass(frozen=True)
class SizeModelConfig:
    enabled: bool = True
    epochs: int = 10
    batch_size: int = 64
    bsize: int = 512
    augment: bool = True
    refine: bool = True
    max_ratio: float = 2.0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.bsize < 32 or self.bsize % 16:
            raise ValueError(f"bsize must be a multiple of 16 and >= 32, got {self.bsize!r}")
        if not self.max_ratio >= 1:
            raise ValueError(f"max_ratio must be >= 1, got {self.max_ratio!r}")


@dataclass(frozen=True)
class InferenceConfig:
    augment: bool = True
    resample: bool = True
    tile_overlap: float = 0.1
    batch_size: int = 8
    max_size_fraction: float = 0.4

    def __post_init__(self):
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not 0 < self.max_size_fraction <= 1:
            raise ValueError(f"max_size_fraction must be in (0, 1], got {self.max_size_fraction!r}")


@dataclass(frozen=True)
class CellTypeConfig:
    """Inference settings of one cell type (``postprocess_raw`` reads all but ``diameter``)."""

    diameter: Literal["size_model", "median"] | float = "size_model"
    flow_threshold: float = 0.6
    cellprob_threshold: float = -1.0
    min_size: int = 15
    niter: int | None = None  # dynamics iterations; None = cellpose's 200 (/ rescale when resampling)

    def __post_init__(self):
        if isinstance(self.diameter, float) and not self.diameter > 0:
            raise ValueError(f"diameter must be > 0, 'size_model' or 'median', got {self.diameter!r}")
        if self.flow_threshold < 0:
            raise ValueError(f"flow_threshold must be >= 0, got {self.flow_threshold!r}")
        if self.min_size < -1:
            raise ValueError(f"min_size must be >= -1, got {self.min_size!r}")
        if self.niter is not None and self.niter < 1:
            raise ValueError(f"niter must be >= 1 or null, got {self.niter!r}")


# Keys of model folders written before the config vocabulary was shared with Mask R-CNN.
_OLD_KEYS = {"train": {"n_epochs": "epochs", "pretrain_epochs": "livecell_epochs",
                       "learning_rate": "lr", "val_every": "eval_every"},
             "size_model": {"n_epochs": "epochs"}}


def renamed_keys(config: dict) -> dict:
    """A saved model folder's config with the keys of older kit versions renamed (a config
    FILE must use the current keys: unknown keys stay errors there)."""
    out = dict(config)
    for section, names in _OLD_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section] = {names.get(k, k): v for k, v in out[section].items()}
    return out


def _default_cell_types() -> dict:
    return {ct: CellTypeConfig() for ct in CELL_TYPES}


@dataclass(frozen=True)
class CellposeConfig:
    diam_mean: float = 30.0
    width: int = 32                    # CPnet channels at the first level (nbase [2, w, 2w, 4w, 256]); cellpose: 32
    train: TrainConfig = field(default_factory=TrainConfig)
    size_model: SizeModelConfig = field(default_factory=SizeModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    cell_types: dict[str, CellTypeConfig] = field(default_factory=_default_cell_types)

    def __post_init__(self):
        if not 5 <= self.diam_mean <= 200:
            raise ValueError(f"diam_mean must be in [5, 200] px, got {self.diam_mean!r}")
        if not (isinstance(self.width, int) and 4 <= self.width <= 128):
            raise ValueError(f"width must be a whole number in [4, 128] (cellpose's network: 32), "
                             f"got {self.width!r}")
        unknown = [k for k in self.cell_types if k not in CELL_TYPES]
        if unknown:
            raise ValueError(f"cell_types: unknown cell type(s) {unknown}; valid are {list(CELL_TYPES)}")
        missing = [k for k in CELL_TYPES if k not in self.cell_types]
        if missing:
            raise ValueError(f"cell_types: missing section(s) for {missing} (all of "
                             f"{list(CELL_TYPES)} are needed)")

    def to_dict(self) -> dict:
        return _config.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> "CellposeConfig":
        return _config.from_dict(cls, data, where)


def load_config(path=None) -> CellposeConfig:
    """The config in ``path`` (default :data:`DEFAULT_CONFIG`); ConfigError (a ValueError) names
    the file, the key and the valid keys."""
    return _config.load(CellposeConfig, DEFAULT_CONFIG if path is None else path)


def _train_section(cfg: CellposeConfig) -> dict:
    """The part of the config a checkpoint depends on (resume refuses to change it); the
    specialists train after the checkpointed stages, so their keys are not part of it."""
    train = {k: v for k, v in _config.to_dict(cfg.train).items() if k not in SPECIALIST_KEYS}
    section = {"diam_mean": cfg.diam_mean, "train": train}
    if cfg.width != 32:  # checkpoints written before the key existed hold cellpose's width
        section["width"] = cfg.width
    return section
