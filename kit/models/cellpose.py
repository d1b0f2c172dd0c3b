"""Cellpose 3.x (CPnet flows + SizeModel) as a kit model: fit on a fold, one model folder, inference.

Training (:func:`fit`)
    * Ground truth -> one label image per image by :func:`training_labels`: train.csv masks
      overlap, a label image cannot, so masks are painted **largest first, smallest last** (a
      smaller mask wins where it overlaps a larger one, so small cells are not swallowed; equal
      areas keep file order, the later one winning). A mask covered entirely by smaller ones
      disappears.
    * Images go through cellpose's own preprocessing (:func:`net_input`: channels ``[0, 0]``,
      1st-99th percentile normalisation), labels through ``dynamics.labels_to_flows``; images with
      fewer than ``train.min_train_masks`` masks are skipped (cellpose's rule).
    * The epoch loop is ours, on cellpose's network, augmentation
      (``transforms.random_rotate_and_resize``, cells rescaled to ``diam_mean``) and loss
      (:func:`seg_loss`, the same as cellpose 3.1's). Owning the loop gives exact resume: every
      ``train.save_every`` epochs ``checkpoint.pt`` holds the weights, the optimiser state and the
      epoch; the random streams are re-seeded from ``(train.seed, epoch)`` at every epoch, so an
      interrupted run resumed from its checkpoint computes the same weights as one uninterrupted
      run. Learning rates: :func:`learning_rates` (cellpose 3.1's schedule).
    * Optional first stage: ``train.livecell_epochs`` epochs on extra images (LIVECell via
      ``kit.data.read_coco``), then ``train.epochs`` on the competition images, with a fresh
      optimiser and schedule per stage.
    * Then the BatchNorm statistics are recomputed with the final weights
      (:func:`recalibrate_batchnorm`; after a short run the running statistics trail the weights
      and the eval-mode network is far off), the SizeModel is fitted by cellpose's
      ``train.train_size`` on the final network (style vector -> log diameter, ridge
      regression), and the per-cell-type median diameter of the training images is kept as the
      fallback.

Inference (:class:`CellposeSegmenter`)
    ``predict(image, cell_type)`` = ``postprocess_raw(predict_raw(image, cell_type), cell_type)``:
    ``predict_raw`` runs the network once at the image's diameter and returns the raw outputs
    (flows, cell probability, style vector, the diameter and where it came from);
    ``postprocess_raw`` runs cellpose's dynamics with the cell type's thresholds. A tuning step can
    cache ``predict_raw`` and search thresholds with ``postprocess_raw`` alone.
    The diameter of an image (per cell type, ``cell_types.<type>.diameter``): a fixed number, the
    training-fold ``median`` of that cell type, or ``size_model``: the style vector of the image at
    its native scale (the scale ``train_size`` learned from) through the regression, refined like
    cellpose's ``SizeModel.eval`` by segmenting at that estimate and measuring the masks; an
    estimate that is not finite or lies outside ``[median / max_ratio, median * max_ratio]`` falls
    back to the median. Output: ``(H, W)`` int32 labels ``1..N``, non-overlapping.

The model folder
    ``model.json`` (``{"type": "cellpose", "config", "diameters", "training", "versions"}``; its
    ``config`` is what inference reads), ``cellpose_net`` (CPnet ``state_dict``, cellpose's own
    format: ``cellpose --pretrained_model`` reads it) and ``cellpose_net_size.npy`` (cellpose's
    size-model format), ``config.yaml`` (verbatim copy of the YAML used), ``epochs.csv`` (one row
    per epoch: stage, learning rate, losses, seconds), ``checkpoint.pt`` (for ``--resume``).

Downloads never happen: the network is built with ``pretrained_model=False`` and weights are
loaded by us from paths checked to exist (cellpose 3.x silently tries to download a built-in
model when handed a path that does not exist).
"""
from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from kit import CELL_TYPES, check_cell_type, package_versions
from kit import config as _config
from kit.atomic import atomic_open, atomic_torch_save
from kit.models import torch_device

__all__ = [
    "CellposeConfig", "TrainConfig", "SizeModelConfig", "InferenceConfig", "CellTypeConfig",
    "DEFAULT_CONFIG", "load_config", "training_labels", "net_input", "seg_loss", "learning_rates",
    "recalibrate_batchnorm", "fit", "CellposeSegmenter",
]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cellpose.yaml"
WEIGHTS = "cellpose_net"
SIZE_MODEL = WEIGHTS + "_size.npy"  # cellpose's naming: <weights>_size.npy
CHECKPOINT = "checkpoint.pt"
EPOCH_LOG = "epochs.csv"
CONFIG_COPY = "config.yaml"
EPOCH_COLUMNS = ("epoch", "stage", "stage_epoch", "lr", "train_loss", "val_loss", "seconds", "n_crops")
CHANNELS = [0, 0]  # grayscale, no nuclear channel (the network still has cellpose's 2 inputs)


# --------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 500
    livecell_epochs: int = 0
    batch_size: int = 8
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
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
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
    train: TrainConfig = field(default_factory=TrainConfig)
    size_model: SizeModelConfig = field(default_factory=SizeModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    cell_types: dict[str, CellTypeConfig] = field(default_factory=_default_cell_types)

    def __post_init__(self):
        if not 5 <= self.diam_mean <= 200:
            raise ValueError(f"diam_mean must be in [5, 200] px, got {self.diam_mean!r}")
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
    """The part of the config a checkpoint depends on (resume refuses to change it)."""
    return {"diam_mean": cfg.diam_mean, "train": _config.to_dict(cfg.train)}


# --------------------------------------------------------------------------------------------
# Data


def training_labels(rles: Sequence[str], shape) -> np.ndarray:
    """(H, W) int32 label image of possibly overlapping Kaggle RLE masks, for training.

    Masks are painted in order of decreasing area, so where masks overlap the **smaller** mask
    wins; equal areas keep list order (the later mask wins, like ``kit.rle.decode_labels``).
    Label ``k + 1`` is ``rles[order[k]]``; a mask covered completely by smaller masks vanishes.
    """
    from kit import rle

    rles = list(rles)
    if not rles:
        return np.zeros(tuple(shape), np.int32)
    ptr, _, lengths = rle.parse_runs(rles, shape)
    owner = np.repeat(np.arange(len(rles)), np.diff(ptr))
    area = np.bincount(owner, weights=lengths, minlength=len(rles))
    order = np.argsort(-area, kind="stable")
    return rle.decode_labels([rles[i] for i in order], shape)


def _normalize_params() -> dict:
    from cellpose import models

    # a copy: cellpose's eval writes into models.normalize_default
    return {**models.normalize_default, "normalize": True, "invert": False}


def net_input(image: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 network input of an (H, W) image, as ``CellposeModel.eval`` makes it
    with ``channels=[0, 0]``: channel 0 = the image scaled so its 1st/99th percentiles are 0/1,
    channel 1 = zeros (the absent nuclear channel)."""
    from cellpose import transforms

    x = transforms.convert_image(np.asarray(image), CHANNELS, nchan=2)
    x = transforms.normalize_img(x, **_normalize_params())
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


@dataclass
class _ImageSet:
    """Training images in memory: per image ~4.3 MB at 520x704 (float16 input and flows)."""

    ids: list = field(default_factory=list)
    cell_types: list = field(default_factory=list)
    x: list = field(default_factory=list)       # (H, W) float16: channel 0 of net_input
    flows: list = field(default_factory=list)   # (3, H, W) float16: cell prob., Y flow, X flow
    labels: list = field(default_factory=list)  # (H, W) int32 (size model, diameters)
    diam: list = field(default_factory=list)    # cellpose diameter of the image's masks, >= 5
    skipped: list = field(default_factory=list)  # ids with too few masks

    def __len__(self):
        return len(self.ids)

    def batch(self, inds):
        """Network inputs (2, H, W) and targets (3, H, W), float32, of images ``inds``."""
        xs = []
        for i in inds:
            x0 = self.x[i].astype(np.float32)
            xs.append(np.stack([x0, np.zeros_like(x0)]))
        return xs, [self.flows[i].astype(np.float32) for i in inds]


def _prepare(records, min_masks: int, device, desc: str, progress: bool) -> _ImageSet:
    from cellpose import dynamics, utils
    from tqdm import tqdm

    out = _ImageSet()
    for rec in tqdm(list(records), desc=desc, unit="img", disable=not progress):
        labels = training_labels(rec.rles, rec.shape)
        n = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
        if n < max(min_masks, 1):
            out.skipped.append(rec.id)
            continue
        flows = dynamics.labels_to_flows([labels.copy()], device=device)[0]  # (4, H, W)
        labels = flows[0].astype(np.int32)  # renumbered 1..n by cellpose
        out.ids.append(rec.id)
        out.cell_types.append(rec.cell_type)
        out.x.append(net_input(rec.load_image())[0].astype(np.float16))
        out.flows.append(flows[1:].astype(np.float16))
        out.labels.append(labels)
        out.diam.append(max(5.0, float(utils.diameters(labels)[0])))
    return out


def _median_diameters(data: _ImageSet, diam_mean: float) -> dict:
    """Per cell type: median of the images' diameters (all images' median when a type has none)."""
    overall = float(np.median(data.diam)) if len(data) else float(diam_mean)
    out = {}
    for ct in CELL_TYPES:
        d = [v for v, t in zip(data.diam, data.cell_types) if t == ct]
        out[ct] = ({"diameter": float(np.median(d)), "n_images": len(d), "source": "training fold"}
                   if d else {"diameter": overall, "n_images": 0,
                              "source": "no image of this type: median of all training images"})
    return out


# --------------------------------------------------------------------------------------------
# Loss, schedule


def seg_loss(lbl: np.ndarray, y, device=None):
    """cellpose 3.1's training loss (``train._loss_fn_seg``): MSE between the predicted flows
    and 5x the true flows, halved, plus BCE-with-logits of the cell probability.

    ``lbl``: (B, 3, h, w) targets (cell probability, Y flow, X flow); ``y``: (B, 3, h, w)
    network output (Y flow, X flow, cell-probability logit).
    """
    import torch
    import torch.nn.functional as F

    device = y.device if device is None else device
    lbl = torch.from_numpy(np.ascontiguousarray(lbl)).to(device)
    loss = F.mse_loss(y[:, :2], 5.0 * lbl[:, 1:]) / 2.0
    return loss + F.binary_cross_entropy_with_logits(y[:, -1], (lbl[:, 0] > 0.5).float())


def learning_rates(n_epochs: int, lr: float, warmup_epochs: int = 10) -> np.ndarray:
    """(n_epochs,) learning rate of every epoch: cellpose 3.1 ``train_seg``'s schedule.

    Linear warm-up over ``w = min(warmup_epochs, n_epochs)`` epochs (``lr * k / w`` at epoch
    ``k - 1``; cellpose starts from exactly 0, which wastes epoch 0, and a run shorter than its
    warm-up never reaches ``lr``), then ``lr``; runs longer than 300 epochs halve it every 10
    epochs over the last 100, runs longer than 100 every 5 over the last 50.
    """
    rates = np.full(n_epochs, float(lr))
    w = min(warmup_epochs, n_epochs)
    if w:
        rates[:w] = lr * np.arange(1, w + 1) / w
    if n_epochs > 300:
        tail, step = 100, 10
    elif n_epochs > 100:
        tail, step = 50, 5
    else:
        return rates
    for k in range(10):
        rates[n_epochs - tail + k * step: n_epochs - tail + (k + 1) * step] = lr / 2 ** (k + 1)
    return rates


# --------------------------------------------------------------------------------------------
# Network, weights


def _new_cellpose_model(diam_mean: float, inference: bool):
    """A random-init ``CellposeModel`` (no download: ``pretrained_model=False``).

    On CPU, MKL-DNN is used for inference only (cellpose's default; ~10% faster here) and off
    for training, where cellpose's per-call conversion made a training step ~1.5x slower.
    """
    import torch
    from cellpose import models

    cp = models.CellposeModel(gpu=torch.cuda.is_available(), pretrained_model=False,
                              diam_mean=float(diam_mean), mkldnn=inference, nchan=2)
    if not inference:
        cp.net.mkldnn = False
    return cp


def _resolve_weights(path) -> Path:
    """A CPnet weights file: ``path`` itself, or ``path/cellpose_net`` for a kit model folder.
    FileNotFoundError (before cellpose sees the path) when there is none."""
    p = Path(path)
    if p.is_dir():
        if (p / WEIGHTS).is_file():
            return p / WEIGHTS
        raise FileNotFoundError(f"pretrained weights: {p} is a folder without a {WEIGHTS} file")
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {p} (a path is checked here "
                                "because cellpose would silently try to download a built-in "
                                "model instead)")
    return p


def _load_state_dict(net, path: Path, expect_diam_mean: float | None) -> None:
    """Load a CPnet ``state_dict`` file into ``net`` with clear errors for a wrong file."""
    import torch

    try:
        state = torch.load(path, map_location=net.device, weights_only=True)
    except Exception as e:  # torch raises many types for a non-checkpoint file
        raise ValueError(f"{path}: not a torch weights file ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "net" in state and isinstance(state["net"], dict):
        state = state["net"]  # a kit checkpoint.pt
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a CPnet state_dict, got {type(state).__name__}")
    if "W2" in state:
        raise ValueError(f"{path}: a cellpose >= 4 (SAM) weights file; this model is cellpose 3's CPnet")
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad:
        raise ValueError(f"{path}: not a CPnet with 2 input channels and 3 outputs "
                         f"(missing keys {missing[:3]}, shape mismatches {bad[:3]})")
    file_diam = float(state["diam_mean"].reshape(-1)[0])
    if expect_diam_mean is not None and not math.isclose(file_diam, expect_diam_mean, rel_tol=1e-4):
        raise ValueError(f"{path}: weights trained with diam_mean {file_diam:g}, config has "
                         f"diam_mean {expect_diam_mean:g}; set diam_mean: {file_diam:g} in the config")
    net.load_state_dict({k: state[k] for k in own})


def _write_json(obj, path: Path) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Training


class _EpochLog:
    """``epochs.csv``: one row per finished epoch; rows after a checkpoint are dropped on resume."""

    def __init__(self, path: Path, keep_through: int):
        self.path = path
        rows = []
        if keep_through > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_through]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, EPOCH_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, EPOCH_COLUMNS).writerow(row)


def _seed_all(seed: int, epoch: int) -> None:
    import torch

    s = (seed * 1_000_003 + epoch) % 2 ** 32
    np.random.seed(s)  # cellpose's augmentation draws from numpy's global generator
    torch.manual_seed(s)


def _make_optimizer(net, cfg: TrainConfig):
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _crops(data: _ImageSet, inds, diam_mean: float, cfg: TrainConfig):
    from cellpose import transforms

    xs, ys = data.batch(inds)
    rescale = np.array([data.diam[i] for i in inds]) / diam_mean
    imgi, lbl = transforms.random_rotate_and_resize(xs, Y=ys, rescale=rescale,
                                                    scale_range=cfg.scale_range,
                                                    xy=(cfg.bsize, cfg.bsize))[:2]
    return imgi, lbl


def _train_epoch(net, opt, data: _ImageSet, lr: float, diam_mean: float, cfg: TrainConfig) -> tuple:
    import torch

    n = len(data)
    if cfg.nimg_per_epoch is None or cfg.nimg_per_epoch == n:
        order = np.random.permutation(n)
    else:
        order = np.random.choice(n, size=cfg.nimg_per_epoch, replace=True)
    for group in opt.param_groups:
        group["lr"] = lr
    net.train()
    total, count = 0.0, 0
    for k in range(0, len(order), cfg.batch_size):
        inds = order[k:k + cfg.batch_size]
        imgi, lbl = _crops(data, inds, diam_mean, cfg)
        y = net(torch.from_numpy(imgi).to(net.device))[0]
        loss = seg_loss(lbl, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.item()) * len(inds)
        count += len(inds)
    return total / max(count, 1), count


def _val_loss(net, data: _ImageSet, diam_mean: float, cfg: TrainConfig) -> float:
    import torch

    np.random.seed((cfg.seed * 7919 + 12345) % 2 ** 32)  # the same crops every time
    net.eval()
    total = 0.0
    with torch.no_grad():
        for k in range(0, len(data), cfg.batch_size):
            inds = list(range(k, min(k + cfg.batch_size, len(data))))
            imgi, lbl = _crops(data, inds, diam_mean, cfg)
            y = net(torch.from_numpy(imgi).to(net.device))[0]
            total += float(seg_loss(lbl, y).item()) * len(inds)
    return total / max(len(data), 1)


def recalibrate_batchnorm(net, data: _ImageSet, diam_mean: float, cfg: TrainConfig) -> int:
    """Re-estimate every BatchNorm running mean/variance of ``net`` with its final weights.

    BatchNorm layers keep running statistics with momentum 0.05 (CPnet): they trail the weights
    by ~20 steps. At the end of a long run (cellpose's 500 epochs) the weights barely move and
    the trail does not matter; after a short one (a CPU budget, a smoke test) the eval-mode
    network is far off its train-mode self (here: loss 1.17 in eval mode against 0.43 in train
    mode after 130 steps; 0.43 after recalibration). So the statistics are recomputed as plain
    averages over ``cfg.bn_recalibration_crops`` training crops, at most 8 per training image
    (forward passes only, like ``torch.optim.swa_utils.update_bn``). Returns the number of crops
    used (0 = skipped).
    """
    import torch

    n = min(cfg.bn_recalibration_crops, max(len(data), 1) * 8)
    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not n or not layers or not len(data):
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    np_state = np.random.get_state()
    np.random.seed((cfg.seed * 7919 + 4242) % 2 ** 32)
    try:
        net.train()
        with torch.no_grad():
            inds = np.random.choice(len(data), size=n, replace=n > len(data))
            for k in range(0, n, cfg.batch_size):
                imgi, _ = _crops(data, inds[k:k + cfg.batch_size], diam_mean, cfg)
                net(torch.from_numpy(imgi).to(net.device))
    finally:
        np.random.set_state(np_state)
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        net.eval()
    return n


def fit(train_records, out_dir, config: CellposeConfig | None = None, *, config_path=None,
        val_records=(), pretrain_records=(), pretrained=None, resume: bool = False,
        time_budget_s: float | None = None, stop_after_epochs: int | None = None,
        log: Callable | None = None, progress: bool = True) -> "CellposeSegmenter":
    """Train on ``train_records`` (:class:`kit.data.ImageRecord` with RLEs), save the model
    folder ``out_dir`` and return the loaded model.

    ``pretrain_records`` (e.g. LIVECell) are trained on first for ``train.livecell_epochs``.
    ``pretrained``: a CPnet weights file or a kit cellpose model folder to start from (checked to
    exist; its ``diam_mean`` must equal the config's). ``resume``: continue from
    ``out_dir/checkpoint.pt`` (same config ``train`` section and ``diam_mean``, same training
    images); without it an existing checkpoint is an error, not overwritten. Training stops early
    after ``time_budget_s`` seconds of epochs or ``stop_after_epochs`` epochs of this call (the
    checkpoint is saved; ``resume`` continues); the model folder is written either way and says
    in ``model.json`` ``training`` how many epochs it has. ``log(event, **fields)`` receives
    progress events (kit.train's ``train.log``); ``val_records`` only feed the monitoring loss
    (``train.eval_every``).
    """
    import torch
    from tqdm import tqdm

    cfg = config if config is not None else load_config(config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda event, **fields: None)
    tcfg = cfg.train
    ckpt_path = out / CHECKPOINT

    # Checks before any heavy work.
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out} to resume from")
    if not resume and ckpt_path.is_file():
        raise ValueError(f"{out} holds a {CHECKPOINT} of an earlier run: pass --resume to continue "
                         "it, or choose another --out")
    pretrained_path = _resolve_weights(pretrained) if pretrained is not None else None
    if tcfg.livecell_epochs and not pretrain_records:
        raise ValueError(f"train.livecell_epochs is {tcfg.livecell_epochs} but no pretraining "
                         "images were given (kit.train: --livecell JSON --livecell-images DIR)")
    if pretrain_records and not tcfg.livecell_epochs:
        raise ValueError("pretraining images were given but train.livecell_epochs is 0")
    train_records = list(train_records)
    if not train_records:
        raise ValueError("no training images")

    device = torch_device("auto")
    t_prep = time.time()
    data = _prepare(train_records, tcfg.min_train_masks, device, "cellpose data", progress)
    if not len(data):
        raise ValueError(f"no training image has >= {tcfg.min_train_masks} masks "
                         "(train.min_train_masks)")
    pre = (_prepare(pretrain_records, tcfg.min_train_masks, device, "pretrain data", progress)
           if tcfg.livecell_epochs else None)
    val = (_prepare(val_records, 1, device, "held-out data", progress)
           if tcfg.eval_every and val_records else None)
    log("cellpose_data", n_train=len(data), skipped=data.skipped,
        n_pretrain=len(pre) if pre else 0, n_val=len(val) if val else 0,
        seconds=round(time.time() - t_prep, 1))

    torch_state = torch.random.get_rng_state()
    torch.manual_seed(tcfg.seed)  # the random initial weights, too, are a function of the seed
    cp = _new_cellpose_model(cfg.diam_mean, inference=False)
    net = cp.net
    stages = ([("pretrain", tcfg.livecell_epochs, pre)] if pre is not None else []) + \
             [("train", tcfg.epochs, data)]
    total_epochs = sum(n for _, n, _ in stages)

    done, opt_state, seconds_before = 0, None, 0.0
    if resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt.get("train_config") != _train_section(cfg):
            raise ValueError(f"--resume: the config's diam_mean/train section differs from the "
                             f"checkpoint's ({ckpt.get('train_config')}); resume with the same "
                             "config, or start a new --out")
        if ckpt.get("train_ids") != data.ids:
            raise ValueError("--resume: the training images differ from the checkpoint's "
                             "(same --data, --folds and --fold are needed)")
        net.load_state_dict(ckpt["net"])
        done, opt_state = int(ckpt["epoch"]), ckpt.get("optimizer")
        seconds_before = float(ckpt.get("train_seconds", 0.0))
        pretrained_path = Path(ckpt["pretrained"]) if ckpt.get("pretrained") else None
        log("cellpose_resume", from_epoch=done, of=total_epochs)
    elif pretrained_path is not None:
        _load_state_dict(net, pretrained_path, cfg.diam_mean)
        log("cellpose_pretrained", path=str(pretrained_path))
    epoch_log = _EpochLog(out / EPOCH_LOG, keep_through=done)

    def save_checkpoint(epoch_done, opt, seconds):
        atomic_torch_save({"epoch": epoch_done, "net": net.state_dict(),
                            "optimizer": opt.state_dict() if opt is not None else None,
                            "train_config": _train_section(cfg), "train_ids": data.ids,
                            "pretrained": str(pretrained_path) if pretrained_path else None,
                            "train_seconds": seconds}, ckpt_path)

    np_state = np.random.get_state()
    t0 = time.time()
    stopped = None
    ran = 0
    bar = tqdm(total=total_epochs, initial=done, desc="cellpose epochs", unit="ep",
               disable=not progress)
    try:
        start = 0
        for stage, n_epochs, stage_data in stages:
            end = start + n_epochs
            if done >= end:
                start = end
                continue
            rates = learning_rates(n_epochs, tcfg.lr, tcfg.warmup_epochs)
            opt = _make_optimizer(net, tcfg)
            if opt_state is not None and done > start:
                opt.load_state_dict(opt_state)
            opt_state = None
            for g in range(done, end):
                t_ep = time.time()
                _seed_all(tcfg.seed, g)
                loss, n_crops = _train_epoch(net, opt, stage_data, float(rates[g - start]),
                                             cfg.diam_mean, tcfg)
                if not math.isfinite(loss):
                    raise ValueError(f"training loss is {loss} at epoch {g + 1}: lower "
                                     "train.lr")
                vloss = ""
                if val is not None and len(val) and ((g + 1) % tcfg.eval_every == 0 or g + 1 == end):
                    vloss = round(_val_loss(net, val, cfg.diam_mean, tcfg), 6)
                done, ran = g + 1, ran + 1
                elapsed = seconds_before + time.time() - t0
                epoch_log.write(epoch=done, stage=stage, stage_epoch=g + 1 - start,
                                lr=float(rates[g - start]), train_loss=round(loss, 6),
                                val_loss=vloss, seconds=round(time.time() - t_ep, 2),
                                n_crops=n_crops)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                over_time = time_budget_s is not None and time.time() - t0 >= time_budget_s
                over_count = stop_after_epochs is not None and ran >= stop_after_epochs
                if done % tcfg.save_every == 0 or done == end or over_time or over_count:
                    save_checkpoint(done, opt if done < end else None, elapsed)
                if (over_time or over_count) and done < total_epochs:
                    stopped = "time budget" if over_time else "epoch budget"
                    break
            if stopped:
                break
            start = end
    finally:
        bar.close()
        np.random.set_state(np_state)  # the caller's random streams are left as they were
        torch.random.set_rng_state(torch_state)
    train_seconds = seconds_before + time.time() - t0
    log("cellpose_train", epochs_done=done, epochs_planned=total_epochs, stopped=stopped,
        seconds=round(train_seconds, 1))

    # The final network (BatchNorm statistics recomputed), its size model, the folder.
    n_bn = recalibrate_batchnorm(net, data, cfg.diam_mean, tcfg)
    log("cellpose_batchnorm", crops=n_bn)
    net.diam_labels.data = torch.ones(1, device=net.device) * float(np.mean(data.diam))
    net.save_model(str(out / WEIGHTS))
    size_path = None
    if cfg.size_model.enabled:
        t_size = time.time()
        size_path = _fit_size_model(net, str(out / WEIGHTS), data, cfg.size_model,
                                    tcfg.min_train_masks)
        log("cellpose_size_model", seconds=round(time.time() - t_size, 1))
    elif (out / SIZE_MODEL).exists():
        (out / SIZE_MODEL).unlink()
    doc = {
        "type": CellposeSegmenter.TYPE,
        "config": cfg.to_dict(),
        "diameters": _median_diameters(data, cfg.diam_mean),
        "weights": WEIGHTS,
        "size_model": SIZE_MODEL if size_path else None,
        "training": {"epochs_done": done, "epochs_planned": total_epochs,
                     "complete": done >= total_epochs, "stopped": stopped,
                     "train_seconds": round(train_seconds, 1), "n_images": len(data),
                     "skipped_images": data.skipped, "n_pretrain_images": len(pre) if pre else 0,
                     "pretrained": str(pretrained_path) if pretrained_path else None,
                     "diam_labels": float(np.mean(data.diam)), "device": str(device)},
        "versions": package_versions(("cellpose", "torch", "numpy")),
    }
    if config_path is not None:
        text = Path(config_path).read_text()
        if load_config(config_path) != cfg:
            text += ("\n# NOTE: the run changed values of this file (e.g. kit.train --epochs); "
                     "model.json 'config' holds the values used.\n")
    else:
        text = (DEFAULT_CONFIG.read_text() if config is None else
                "# written by kit.models.cellpose.fit from a config object\n"
                + json.dumps(cfg.to_dict(), indent=1) + "\n")
    with atomic_open(out / CONFIG_COPY) as f:
        f.write(text)
    _write_json(doc, out / "model.json")
    return CellposeSegmenter.load(out)


def _fit_size_model(net, weights: str, data: _ImageSet, scfg: SizeModelConfig, min_masks: int):
    """cellpose's ``train.train_size`` on the training images; writes ``<weights>_size.npy``."""
    from cellpose import train

    images = [np.stack([x.astype(np.float32), np.zeros(x.shape, np.float32)])  # net inputs,
              for x in data.x]                                                  # normalised
    # (2, H, W) labels + foreground: cellpose treats a multi-channel label array as precomputed
    # flows and reads only channel 0 (the masks) for the diameters
    labels = [np.stack([lab.astype(np.float32), (lab > 0).astype(np.float32)]) for lab in data.labels]
    np_state = np.random.get_state()
    try:
        train.train_size(net, weights, train_data=images, train_labels=labels,
                         channels=None, normalize=False, n_epochs=scfg.epochs,
                         batch_size=scfg.batch_size, bsize=scfg.bsize,
                         min_train_masks=min_masks)
    finally:
        np.random.set_state(np_state)
    path = Path(weights + "_size.npy")
    if not path.is_file():
        raise RuntimeError(f"cellpose train_size did not write {path}")
    return path


# --------------------------------------------------------------------------------------------
# Inference


def _check_image(image) -> np.ndarray:
    from kit.models import check_image

    return check_image(image)


class CellposeSegmenter:
    """A loaded cellpose model folder (see the module docstring)."""

    TYPE = "cellpose"

    def __init__(self, cp, config: CellposeConfig, diameters: dict, size_params: dict | None,
                 folder: Path | None = None):
        self.cp = cp
        self.config = config
        self.diameters = {ct: float(diameters[ct]["diameter"]) for ct in CELL_TYPES}
        self.size_params = size_params
        self.folder = folder

    @property
    def diam_mean(self) -> float:
        return float(self.cp.diam_mean)

    @classmethod
    def load(cls, model_dir) -> "CellposeSegmenter":
        """Read a folder written by :func:`fit` (only ``model.json``, the weights and the size
        model are read)."""
        from kit.models import read_model_json

        folder = Path(model_dir)
        path, doc = read_model_json(folder, cls.TYPE)
        cfg = CellposeConfig.from_dict(renamed_keys(doc["config"]), where=f"{path}: config")
        weights = folder / doc.get("weights", WEIGHTS)
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: weights file {weights.name} is missing")
        cp = _new_cellpose_model(cfg.diam_mean, inference=True)
        _load_state_dict(cp.net, weights, cfg.diam_mean)
        cp.net.eval()
        cp.diam_mean = float(cp.net.diam_mean.item())
        cp.diam_labels = float(cp.net.diam_labels.item())
        size_params = None
        if doc.get("size_model"):
            size_file = folder / doc["size_model"]
            if not size_file.is_file():
                raise FileNotFoundError(f"{folder}: size model file {size_file.name} is missing")
            # cellpose's format: a pickled dict {A, smean, ymean, diam_mean} in a .npy
            from kit.models import model_file

            with model_file(size_file, "size model file"):
                size_params = np.load(size_file, allow_pickle=True).item()
        return cls(cp, cfg, doc["diameters"], size_params, folder)

    # -- diameter ---------------------------------------------------------------------------

    def _eval(self, image, **kw):
        inf = self.config.inference
        kw.setdefault("augment", inf.augment)
        return self.cp.eval(image, channels=CHANNELS, batch_size=inf.batch_size,
                            tile_overlap=inf.tile_overlap, bsize=self.config.train.bsize,
                            normalize=_normalize_params(), **kw)

    def size_model_diameter(self, image: np.ndarray) -> float:
        """The size model's diameter estimate (px) of an image; NaN without a size model.

        Step 1: the style vector of the image at its native scale (the scale cellpose's
        ``train_size`` learned from) -> ``exp(A . (style - smean) + log(diam_mean) + ymean)``,
        at least 5 (cellpose's formula). Step 2 (``size_model.refine``, like cellpose's
        ``SizeModel.eval``): segment at that diameter with cellpose's default thresholds and
        return the median diameter of the masks (step 1's value when there are none).
        """
        if self.size_params is None:
            return float("nan")
        p = self.size_params
        style = np.asarray(self._eval(image, rescale=1.0, resample=False, compute_masks=False,
                                      augment=self.config.size_model.augment)[-1], np.float32)
        d = float(np.exp(p["A"] @ (style - p["smean"]).T + np.log(p["diam_mean"]) + p["ymean"]))
        d = max(5.0, d)
        if self.config.size_model.refine and math.isfinite(d):
            from cellpose import utils

            masks = self._eval(image, rescale=self.diam_mean / d, resample=False, interp=False,
                               augment=self.config.size_model.augment)[0]
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)  # no masks: mean of nothing
                dm = float(utils.diameters(masks)[0])
            if math.isfinite(dm) and dm > 0:
                d = dm
        return d

    def estimate_diameter(self, image: np.ndarray, cell_type: str) -> tuple[float, str]:
        """``(diameter in px, source)``; source is ``config``, ``median``, ``size_model`` or
        ``median (size model gave X)`` when the estimate was rejected."""
        check_cell_type(cell_type)
        setting = self.config.cell_types[cell_type].diameter
        if isinstance(setting, float):
            return setting, "config"
        median = self.diameters[cell_type]
        if setting == "median" or self.size_params is None:
            return median, "median"
        d = self.size_model_diameter(image)
        r = self.config.size_model.max_ratio
        if not (math.isfinite(d) and median / r <= d <= median * r):
            return median, f"median (size model gave {d:.1f})"
        return d, "size_model"

    # -- prediction -------------------------------------------------------------------------

    def predict_raw(self, image: np.ndarray, cell_type: str) -> dict:
        """Network outputs of one image, before any threshold.

        Returns ``{"dP": (2, h, w) float32 flows (Y, X), "cellprob": (h, w) float32 logits,
        "style": (256,) float32, "diameter": float, "diameter_source": str, "rescale": float
        (diam_mean / diameter), "niter": float (cellpose's default dynamics iterations),
        "shape": (H, W)}``; ``(h, w) = (H, W)`` when ``inference.resample`` (else the rescaled
        size).
        """
        image = _check_image(image)
        diameter, source = self.estimate_diameter(image, cell_type)
        _, flows, style = self._eval(image, diameter=diameter, resample=self.config.inference.resample,
                                     compute_masks=False)
        rescale = self.diam_mean / diameter
        return {"dP": np.asarray(flows[1], np.float32), "cellprob": np.asarray(flows[2], np.float32),
                "style": np.asarray(style, np.float32), "diameter": float(diameter),
                "diameter_source": source, "rescale": float(rescale),
                "niter": 200.0 / rescale if self.config.inference.resample else 200.0,
                "shape": tuple(image.shape)}

    def postprocess_raw(self, raw: dict, params: CellTypeConfig | dict | str) -> np.ndarray:
        """(H, W) int32 labels ``1..N`` from :meth:`predict_raw`'s output by cellpose's dynamics.

        ``params``: a cell type name (its config section), a :class:`CellTypeConfig`, or a dict
        of :class:`CellTypeConfig` keys (checked; missing keys take the class defaults).
        """
        from cellpose import dynamics

        if isinstance(params, str):
            check_cell_type(params)
            params = self.config.cell_types[params]
        elif isinstance(params, dict):
            params = _config.from_dict(CellTypeConfig, params, "params")
        shape = tuple(raw["shape"])
        dP, cellprob = raw["dP"], raw["cellprob"]
        resize = None if tuple(cellprob.shape) == shape else list(shape)
        masks = dynamics.resize_and_compute_masks(
            dP, cellprob, niter=params.niter if params.niter is not None else raw["niter"],
            cellprob_threshold=params.cellprob_threshold, flow_threshold=params.flow_threshold,
            interp=True, resize=resize, min_size=params.min_size,
            max_size_fraction=self.config.inference.max_size_fraction, device=self.cp.device)
        import fastremap

        labels = np.asarray(masks).astype(np.int32, copy=False)
        labels, _ = fastremap.renumber(labels, in_place=True)
        return np.ascontiguousarray(labels, dtype=np.int32)

    def predict(self, image: np.ndarray, cell_type: str) -> np.ndarray:
        """(H, W) int32 label image (0 = background, 1..N, non-overlapping) of an (H, W) uint8
        image of a known cell type."""
        return self.postprocess_raw(self.predict_raw(image, cell_type), cell_type)
