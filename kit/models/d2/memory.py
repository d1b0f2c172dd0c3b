"""The memory plan of a detectron2 training run (:mod:`kit.models.memory_plan`): the working
set of its largest pass at the sizes of its detectron2 config, with the Mask R-CNN constants of
:mod:`kit.models.maskrcnn.memory` (the same network; see ``kit.models.d2.port``)."""
from __future__ import annotations

from kit.models.d2.model import MASK_CHUNK
from kit.models.maskrcnn.memory import EVAL_BYTES_PER_PX, MASK_BOX_MB, TRAIN_BYTES_PER_PX, _scaled_px
from kit.models.memory_plan import LIBS_MB, MB, MemoryPlan, params_mb, records_mb


def memory_plan(config, train, val, livecell=()) -> MemoryPlan:
    """The plan of :func:`kit.models.d2.train.fit` with ``config`` on these records (sizes
    from ``INPUT.*`` and ``SOLVER.IMS_PER_BATCH``; SGD with momentum)."""
    from kit.models import torch_device
    from kit.models.d2.config import build_cfg

    device = torch_device("auto").type
    cfg = build_cfg(config, device="cpu")
    shapes = {r.shape for r in [*train, *val, *livecell]} or {(520, 704)}
    largest = max(shapes, key=lambda s: s[0] * s[1])
    short = max(cfg.INPUT.MIN_SIZE_TRAIN)
    if cfg.INPUT.CROP.ENABLED:
        ch, cw = cfg.INPUT.CROP.SIZE
        per_image = short * short * max(ch, cw) / min(ch, cw)
    else:
        per_image = _scaled_px(largest, short, cfg.INPUT.MAX_SIZE_TRAIN)
    train_px = int(cfg.SOLVER.IMS_PER_BATCH * per_image)
    eval_px = _scaled_px(largest, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    passes = {"training": train_px * TRAIN_BYTES_PER_PX,
              "validation": eval_px * EVAL_BYTES_PER_PX + MASK_CHUNK * MASK_BOX_MB * MB}
    name = max(passes, key=passes.get)
    from detectron2.modeling import build_model

    n_params = sum(p.numel() for p in build_model(cfg).parameters())
    return MemoryPlan(
        "detectron2", device, records_mb([*train, *val, *livecell]),
        LIBS_MB["detectron2"],
        params_mb(n_params, "sgd"), passes[name] / MB,
        f"{name}: {(train_px if name == 'training' else eval_px) // 1000}k px per batch")
