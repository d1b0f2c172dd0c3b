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


def scaled_px(shape, min_size: int, max_size: int) -> int:
    """Pixels of an image of ``shape`` (H, W) resized so that its short side is ``min_size``
    and its long side at most ``max_size`` (torchvision's and detectron2's rule)."""
    h, w = shape
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return int(h * w * scale * scale)


def largest_shape(records) -> tuple[int, int]:
    """The (H, W) of the records' largest image ((520, 704) when there are none)."""
    return max({r.shape for r in records} or {(520, 704)}, key=lambda s: s[0] * s[1])


def detection_plan(family: str, device: str, records, n_params: int, optimizer: str,
                   train_px: int, eval_px: int, mask_chunk: int, weight_copies: int = 0) -> MemoryPlan:
    """The plan of a Mask R-CNN trainer (either engine): its larger pass of a training batch of
    ``train_px`` pixels and one validation image of ``eval_px`` with the mask head on
    ``mask_chunk`` boxes at a time; ``weight_copies`` more float32 copies of the weights held
    while training (a specialist stage keeps the all-type weights it starts from)."""
    passes = {"training": train_px * TRAIN_BYTES_PER_PX,
              "validation": eval_px * EVAL_BYTES_PER_PX + mask_chunk * MASK_BOX_MB * MB}
    name = max(passes, key=passes.get)
    return MemoryPlan(
        family, device, records_mb(records), LIBS_MB[family],
        params_mb(n_params, optimizer) + weight_copies * n_params * 4 / MB,
        passes[name] / MB,
        f"{name}: {(train_px if name == 'training' else eval_px) // 1000}k px per batch")


def memory_plan(config, train, val, livecell=()) -> MemoryPlan:
    """The plan of :func:`kit.models.maskrcnn.train.fit` with ``config`` on these records."""
    from kit.models import torch_device
    from kit.models.maskrcnn.network import build_network

    m, t = config.model, config.train
    records = [*train, *val, *livecell]
    largest = largest_shape(records)
    train_px = t.batch_size * (t.crop ** 2 if t.crop else scaled_px(largest, max(m.train_min_sizes),
                                                                       m.train_max_size))
    n_params = sum(p.numel() for p in build_network(m).parameters())
    return detection_plan("maskrcnn", torch_device(t.device).type, records, n_params, t.optimizer,
                          train_px, scaled_px(largest, m.test_min_size, m.test_max_size),
                          m.mask_chunk, weight_copies=1 if t.specialize else 0)
