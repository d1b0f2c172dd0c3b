"""The memory plan of a detectron2 training run (:mod:`kit.models.memory_plan`): the working
set of its largest pass at the sizes of its detectron2 config, with the Mask R-CNN constants of
:mod:`kit.models.maskrcnn.memory` (the same network; see ``kit.models.d2.port``)."""
from __future__ import annotations

from kit.models.d2.model import MASK_CHUNK
from kit.models.maskrcnn.memory import detection_plan, largest_shape, scaled_px
from kit.models.memory_plan import MemoryPlan


def memory_plan(config, train, val, livecell=()) -> MemoryPlan:
    """The plan of :func:`kit.models.d2.train.fit` with ``config`` on these records (sizes
    from ``INPUT.*`` and ``SOLVER.IMS_PER_BATCH``; SGD with momentum)."""
    from detectron2.modeling import build_model

    from kit.models import torch_device
    from kit.models.d2.config import build_cfg

    cfg = build_cfg(config, device="cpu")
    records = [*train, *val, *livecell]
    largest = largest_shape(records)
    short = max(cfg.INPUT.MIN_SIZE_TRAIN)
    if cfg.INPUT.CROP.ENABLED:
        ch, cw = cfg.INPUT.CROP.SIZE
        per_image = short * short * max(ch, cw) / min(ch, cw)
    else:
        per_image = scaled_px(largest, short, cfg.INPUT.MAX_SIZE_TRAIN)
    n_params = sum(p.numel() for p in build_model(cfg).parameters())
    return detection_plan("detectron2", torch_device("auto").type, records, n_params, "sgd",
                          int(cfg.SOLVER.IMS_PER_BATCH * per_image),
                          scaled_px(largest, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
                          MASK_CHUNK)
