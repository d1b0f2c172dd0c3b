"""The Cellpose network: a random-init ``CellposeModel`` and the loading of weights from files
checked to exist (never a download)."""
from __future__ import annotations

import math
from pathlib import Path

from kit.models.cellpose.config import WEIGHTS


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
