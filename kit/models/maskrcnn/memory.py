"""The memory plan of a Mask R-CNN training run (:mod:`kit.models.memory_plan`): its records and
the working set of its largest pass (a training batch, or one validation / out-of-fold image at
the test scale with its detections). No cache: images and masks are read per batch."""
from __future__ import annotations

from kit.models.memory_plan import LIBS_MB, MB, MemoryPlan, params_mb, records_mb

# Activation bytes per input pixel, fitted on the phases of whole CPU runs (train.log's
# peak_rss_mb; R18-FPN, 256-px crops, batch 2: +542 MB over 131k px): training = forward +
# backward of the FPN network and its heads. Eval = one image's backbone, RPN and box head
# (+323 MB over 366k px) and the mask head on ``mask_chunk`` boxes at a time (~2.5 MB a box).
TRAIN_BYTES_PER_PX = 4300
EVAL_BYTES_PER_PX = 950
MASK_BOX_MB = 2.5


def _scaled_px(shape, min_size: int, max_size: int) -> int:
    h, w = shape
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return int(h * w * scale * scale)


def memory_plan(config, train, val, livecell=()) -> MemoryPlan:
    """The plan of :func:`kit.models.maskrcnn.train.fit` with ``config`` on these records."""
    from kit.models import torch_device
    from kit.models.maskrcnn.network import build_network

    m, t = config.model, config.train
    shapes = {r.shape for r in [*train, *val, *livecell]} or {(520, 704)}
    largest = max(shapes, key=lambda s: s[0] * s[1])
    train_px = t.batch_size * (t.crop ** 2 if t.crop else _scaled_px(largest, max(m.train_min_sizes),
                                                                        m.train_max_size))
    eval_px = _scaled_px(largest, m.test_min_size, m.test_max_size)
    passes = {"training": train_px * TRAIN_BYTES_PER_PX,
              "validation": eval_px * EVAL_BYTES_PER_PX + m.mask_chunk * MASK_BOX_MB * MB}
    name = max(passes, key=passes.get)
    n_params = sum(p.numel() for p in build_network(m).parameters())
    return MemoryPlan(
        "maskrcnn", torch_device(t.device).type, records_mb([*train, *val, *livecell]),
        LIBS_MB["maskrcnn"], params_mb(n_params, t.optimizer),
        passes[name] / MB,
        f"{name}: {(train_px if name == 'training' else eval_px) // 1000}k px per batch")
