"""Whether a CPU training step runs under bfloat16 autocast (``train.amp_cpu`` of the Cellpose
and Mask R-CNN configs).

bfloat16 pays only where the CPU computes it natively (oneDNN's bfloat16 kernels: AVX512-BF16
or AMX). Elsewhere PyTorch emulates it and a step is far slower than in float32: a Cellpose
step (8 crops of 128 px, one thread) took 150 s under autocast against 4 s in float32 on an
AVX2 CPU, while an AVX512-BF16 CPU ran it ~1.75x faster than float32. ``amp_cpu: auto``
(the CPU recipes) therefore asks the CPU; ``true`` forces autocast, ``false`` never uses it.
"""
from __future__ import annotations

import warnings
from typing import Literal

__all__ = ["AmpSetting", "cpu_has_native_bf16", "cpu_autocast"]

AmpSetting = bool | Literal["auto"]


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (False when PyTorch cannot say)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_autocast(setting: AmpSetting) -> bool:
    """Whether CPU training steps run under bfloat16 autocast for ``train.amp_cpu`` =
    ``setting``: ``"auto"`` = where the CPU has native bfloat16; ``True`` = always (a warning
    when it would be emulated); ``False`` = never."""
    if setting == "auto":
        return cpu_has_native_bf16()
    if setting is True and not cpu_has_native_bf16():
        warnings.warn("train.amp_cpu: true on a CPU without native bfloat16: autocast is emulated "
                      "and a training step is many times slower than in float32 (150 s against "
                      "4 s measured for a Cellpose step on an AVX2 CPU); amp_cpu: auto uses it "
                      "only where it is native", RuntimeWarning, stacklevel=2)
    return bool(setting)
