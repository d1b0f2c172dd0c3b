"""The memory plan of a Cellpose training run (:mod:`kit.models.memory_plan`): its records, the
CPnet working set of its largest pass, and its target cache (exact: per image the float16
input, the 3 float16 flow channels and the int32 labels of :mod:`kit.models.cellpose.data`)."""
from __future__ import annotations

from kit.models.memory_plan import LIBS_MB, MB, MemoryPlan, params_mb, records_mb

# Peak RSS of one CPnet pass (nbase 32-256, 2 input channels) on CPU, fitted on batches of
# 131k-803k px (training: forward + backward, 256 MB + 5,080 B/px), 524k-2,097k px (inference:
# the whole forward under no_grad, 53 MB + 1,389 B/px; the SizeModel's styles: the downsample
# path alone, 653-669 B/px). A whole run's training phase holds 1.55x a single step's
# activations (the heap its steps leave behind; 2,260 MB measured against 1,745 MB for one
# step with 38 real images, benchmarks.memory). A CPnet of another ``width`` scales the per-pixel
# bytes by width / 32 (the full-resolution levels, which hold most of them, have width / 32 of
# the channels) and has its own parameter count (kit.models.cellpose.network.cpnet_params): for
# cellpose_cpu.yaml (width 16, 4 crops of 128 px) the plan says 1.4 GB, the demo's kit.train run
# peaked at 1.48 GB.
TRAIN_FIXED_MB, TRAIN_BYTES_PER_PX, STEP_SLACK = 256, 5100, 1.55
EVAL_FIXED_MB, EVAL_BYTES_PER_PX = 50, 1400
STYLE_BYTES_PER_PX = 660
INFERENCE_TILE = 224             # cellpose's eval tile (bsize)
CACHE_BYTES_PER_PX = 2 + 3 * 2 + 4
CACHE_BYTES_PER_IMAGE = 3 * 128 + 200  # .npy headers and the .json marker


def memory_plan(config, train, val, livecell=()) -> MemoryPlan:
    """The plan of :func:`kit.models.cellpose.train.fit` with ``config`` on these records."""
    from kit.models import torch_device
    from kit.models.cellpose.data import targets_cache_dir
    from kit.models.cellpose.network import cpnet_params

    t, s = config.train, config.size_model
    w = config.width / 32
    passes = {"training": (t.batch_size * t.bsize ** 2, TRAIN_FIXED_MB, TRAIN_BYTES_PER_PX * w, STEP_SLACK),
              "SizeModel": (s.batch_size * s.bsize ** 2 if s.enabled else 0, EVAL_FIXED_MB,
                            STYLE_BYTES_PER_PX * w, 1.0),
              "inference": (config.inference.batch_size * INFERENCE_TILE ** 2, EVAL_FIXED_MB,
                            EVAL_BYTES_PER_PX * w, 1.0)}
    activations = {k: (fixed + px * per_px / MB) * slack
                   for k, (px, fixed, per_px, slack) in passes.items()}
    name = max(activations, key=activations.get)
    cached = [*train, *(val if t.eval_every else ()), *(livecell if t.livecell_epochs else ())]
    cache = sum(r.shape[0] * r.shape[1] * CACHE_BYTES_PER_PX + CACHE_BYTES_PER_IMAGE for r in cached)
    return MemoryPlan(
        "cellpose", torch_device("auto").type, records_mb([*train, *val, *livecell]),
        # a specialist trains a second network (and its optimizer) beside the all-type one
        LIBS_MB["cellpose"], params_mb(cpnet_params(config.width), t.optimizer) * (2 if t.specialize else 1),
        activations[name],
        f"{name}: {passes[name][0] // 1000}k px per batch", cache / MB, str(targets_cache_dir()), len(cached))
