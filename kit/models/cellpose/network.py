"""The Cellpose network: a random-init ``CellposeModel`` and the loading of weights from files
checked to exist (never a download)."""
from __future__ import annotations

import functools
import math
from pathlib import Path

from kit.models.cellpose.config import WEIGHTS


STYLE_CHANNELS = 256  # the last level, whose mean is the style: cellpose's run_net, SizeModel
                      # and denoise hold 256-long style vectors, whatever the network
_FIRST_CONV = "downsample.down.res_down_0.conv.conv_0.2.weight"  # (width, 2, 3, 3)


def cpnet_nbase(width: int) -> list[int]:
    """CPnet's channels per level for ``width`` channels at the first level: ``[2, w, 2w, 4w,
    256]`` (2 input channels; the last level stays :data:`STYLE_CHANNELS`); cellpose's own
    network is ``width`` 32: ``[2, 32, 64, 128, 256]``."""
    return [2, width, 2 * width, 4 * width, STYLE_CHANNELS]


def new_cpnet(width: int, diam_mean: float = 30.0, mkldnn: bool = False):
    """A random-init CPnet of :func:`cpnet_nbase` ``(width)`` channels and 3 outputs, built as
    ``CellposeModel`` builds its own (3x3 convolutions, max pooling)."""
    from cellpose.resnet_torch import CPnet

    return CPnet(cpnet_nbase(width), 3, sz=3, mkldnn=mkldnn, max_pool=True, diam_mean=diam_mean)


@functools.lru_cache(maxsize=None)
def cpnet_params(width: int) -> int:
    """The number of parameters of :func:`new_cpnet` ``(width)`` (6,600,845 for cellpose's
    width 32; 5,158,605 for 16: the 256-channel last level holds most of them)."""
    return sum(p.numel() for p in new_cpnet(width).parameters())


def _new_cellpose_model(diam_mean: float, inference: bool, width: int = 32):
    """A random-init ``CellposeModel`` (no download: ``pretrained_model=False``) whose network
    has ``width`` channels at its first level (:func:`cpnet_nbase`; cellpose's: 32). A
    narrower CPnet costs less compute per pixel: a float32 training step of width 16 takes
    0.45x the time of 32 on one CPU thread (8 crops of 128 px: 1.85 s against 4.1 s).

    On CPU, MKL-DNN is used for inference only (cellpose's default; ~10% faster here) and off
    for training, where cellpose's per-call conversion made a training step ~1.5x slower.
    """
    import torch
    from cellpose import models

    cp = models.CellposeModel(gpu=torch.cuda.is_available(), pretrained_model=False,
                              diam_mean=float(diam_mean), mkldnn=inference, nchan=2)
    if width != 32:  # CellposeModel takes no widths: its own net is replaced
        cp.nbase = cpnet_nbase(width)
        cp.net = new_cpnet(width, cp.diam_mean, cp.mkldnn).to(cp.device)
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
        first = state.get(_FIRST_CONV)
        hint = (f"; the file's CPnet has width {first.shape[0]}, set width: {first.shape[0]} in "
                "the config" if getattr(first, "ndim", 0) == 4 else "")
        raise ValueError(f"{path}: not a CPnet of width {own[_FIRST_CONV].shape[0]} with 2 input "
                         f"channels and 3 outputs (missing keys {missing[:3]}, shape mismatches "
                         f"{bad[:3]}){hint}")
    file_diam = float(state["diam_mean"].reshape(-1)[0])
    if expect_diam_mean is not None and not math.isclose(file_diam, expect_diam_mean, rel_tol=1e-4):
        raise ValueError(f"{path}: weights trained with diam_mean {file_diam:g}, config has "
                         f"diam_mean {expect_diam_mean:g}; set diam_mean: {file_diam:g} in the config")
    net.load_state_dict({k: state[k] for k in own})
