"""The detectron2 family's config: one YAML naming detectron2's base config, the detectron2
keys set over it, and the kit's own sections (``train``, ``postprocess``, ``cell_type``);
defaults and where each number came from in ``kit/configs/detectron2.yaml``.

:func:`load_config` reads and checks the kit part without detectron2; :func:`build_cfg` turns
it into detectron2's ``CfgNode`` (and is where a detectron2 key or value that does not fit is
reported, naming the file and the key).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kit import CELL_TYPES
from kit.config import ConfigError
from kit.errors import ModelError, one_line
from kit.postprocess import PostprocessConfig

__all__ = ["DEFAULT_CONFIG_FILE", "TrainSettings", "Detectron2Config", "load_config",
           "require_detectron2", "base_config_path", "build_cfg", "INSTALL_HINT"]

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "detectron2.yaml"
INSTALL_HINT = ("detectron2 is not installed: build it from its source with `make detectron2 "
                "SRC=path/to/detectron2` (a git clone or a tarball of it; README \"detectron2\")")
# keys the kit sets itself (from classes, the trainer's folders and the device)
# (MODEL.WEIGHTS: "" = random init; --pretrained FILE sets it; never a download URL)
KIT_OWNED = ("MODEL.ROI_HEADS.NUM_CLASSES", "OUTPUT_DIR", "DATASETS.TRAIN", "DATASETS.TEST",
             "MODEL.DEVICE", "MODEL.WEIGHTS")


@dataclass(frozen=True)
class TrainSettings:
    """What the kit adds around detectron2's trainer (:mod:`kit.models.d2.train`)."""

    eval_every_epochs: int = 1        # validation MAP (kit.metric) every this many passes + at the end
    eval_max_images: int = 0          # 0 = every validation image
    vflip: bool = True                # vertical flips on top of detectron2's horizontal ones
    budget_cosine: bool = True        # with --time-budget: the LR follows a cosine to 0 at its end
    device: Literal["auto", "cpu", "cuda"] = "auto"
    livecell_epochs: int = 6          # the LIVECell stage (only with --livecell): passes over its images
    livecell_max_iter: int = 0        # a cap on its iterations (0 = none)
    livecell_labels: Literal["single", "cell_line"] = "cell_line"   # its classes (kit.models.livecell)

    def __post_init__(self):
        if self.livecell_epochs < 0:
            raise ValueError(f"livecell_epochs must be >= 0, got {self.livecell_epochs!r}")
        if self.livecell_max_iter < 0:
            raise ValueError(f"livecell_max_iter must be >= 0, got {self.livecell_max_iter!r}")
        if self.eval_every_epochs < 1:
            raise ValueError(f"eval_every_epochs must be >= 1, got {self.eval_every_epochs!r}")
        if self.eval_max_images < 0:
            raise ValueError(f"eval_max_images must be >= 0, got {self.eval_max_images!r}")


@dataclass(frozen=True)
class Detectron2Config:
    """The whole config file. ``base``: a detectron2 model-zoo config name (read by path from
    the installed package's ``model_zoo/configs``) or a YAML file; ``detectron2``: dotted
    detectron2 keys over it (``cfg.merge_from_list``; the value's type must be the base's);
    ``classes``: detection class k = ``classes[k]``; ``cell_type``: ``vote`` (majority class of
    the detections, the seed) or ``given``."""

    base: str = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    classes: tuple[str, ...] = CELL_TYPES
    detectron2: dict[str, Any] = field(default_factory=dict)
    train: TrainSettings = field(default_factory=TrainSettings)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    cell_type: Literal["vote", "given"] = "vote"

    def __post_init__(self):
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and unique, got {list(self.classes)}")
        owned = [k for k in self.detectron2 if k in KIT_OWNED]
        if owned:
            raise ValueError(f"detectron2: {owned} are set by the kit (classes, run folder, "
                             "datasets, train.device, --pretrained); leave them out")


def require_detectron2():
    """The imported ``detectron2`` package; :class:`ModelError` saying how to build it otherwise."""
    try:
        import detectron2
    except ImportError:
        raise ModelError(INSTALL_HINT) from None
    return detectron2


def base_config_path(base: str) -> Path:
    """The YAML file of ``base``: a file path, or a name under detectron2's ``model_zoo/configs``
    (read by path: ``detectron2.model_zoo`` itself imports ``pkg_resources``, gone from
    setuptools >= 81)."""
    if Path(base).is_file():
        return Path(base)
    d2 = require_detectron2()
    path = Path(d2.__file__).parent / "model_zoo" / "configs" / base
    if not path.is_file():
        raise ConfigError(f"{base!r} is neither a file nor a config of detectron2's model zoo "
                          f"({path.parent.parent})")
    return path


def build_cfg(config: Detectron2Config, where: str = "config", device: str = "cpu"):
    """detectron2's ``CfgNode`` of ``config``: the base file, then the ``detectron2`` keys, then
    the kit's (NUM_CLASSES from ``classes``, ``MODEL.DEVICE``). Errors name ``where`` and the key."""
    require_detectron2()
    from detectron2.config import get_cfg

    cfg = get_cfg()
    try:
        cfg.merge_from_file(str(base_config_path(config.base)))
    except ConfigError as e:
        raise ConfigError(f"{where}, key base: {e}") from None
    for key, value in config.detectron2.items():
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            raise ConfigError(f"{where}, key detectron2.{key}: {one_line(e)}") from None
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(config.classes)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""   # the base names a download URL: random init unless --pretrained
    return cfg


def load_config(path=None) -> Detectron2Config:
    """The config in ``path`` (default ``kit/configs/detectron2.yaml``), checked: the kit part
    always, the detectron2 keys too when detectron2 is installed. The ``detectron2`` keys of
    another file are set over the default file's (the seed's overrides stay unless replaced);
    missing kit keys take their defaults, as in every kit config."""
    from kit import config as kconfig

    path = DEFAULT_CONFIG_FILE if path is None else Path(path)
    data = kconfig.load_yaml(path)
    if path != DEFAULT_CONFIG_FILE and isinstance(data, dict) \
            and isinstance(data.get("detectron2", {}), dict):
        defaults = kconfig.load_yaml(DEFAULT_CONFIG_FILE)["detectron2"]
        data = {**data, "detectron2": {**defaults, **(data.get("detectron2") or {})}}
    config = kconfig.from_dict(Detectron2Config, data, str(path))
    import importlib.util

    if importlib.util.find_spec("detectron2") is not None:
        build_cfg(config, str(path))
    return config
