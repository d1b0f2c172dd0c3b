"""Cellpose training steps: cellpose 3.1's loss and learning-rate schedule, seeded random crops,
one epoch of optimizer steps, the monitoring loss and BatchNorm recalibration. Shared by the
all-type run (:mod:`kit.models.cellpose.train`) and the specialists
(:mod:`kit.models.cellpose.specialists`)."""
from __future__ import annotations

import numpy as np

from kit.distributed import SINGLE, rank_batches
from kit.models.cellpose.config import TrainConfig
from kit.models.cellpose.data import _ImageSet


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


def _crops(data: _ImageSet, inds, diam_mean: float, cfg: TrainConfig, batch=None, keys=None):
    """Random training crops of images ``inds`` (``batch``: their ``data.batch(inds)``, when
    already read). ``keys``: one seed per image (a list of ints, for ``np.random.seed``): each
    image's crop is then a function of its key alone, whichever process draws it; without
    ``keys`` the crops draw on numpy's global generator as it stands."""
    from cellpose import transforms

    xs, ys = data.batch(inds) if batch is None else batch
    rescale = np.array([data.diam[i] for i in inds]) / diam_mean
    if keys is None:
        return tuple(transforms.random_rotate_and_resize(
            xs, Y=ys, rescale=rescale, scale_range=cfg.scale_range, xy=(cfg.bsize, cfg.bsize))[:2])
    parts = []
    for x, y, r, key in zip(xs, ys, rescale, keys):
        np.random.seed(key)
        parts.append(transforms.random_rotate_and_resize(
            [x], Y=[y], rescale=np.array([r]), scale_range=cfg.scale_range,
            xy=(cfg.bsize, cfg.bsize))[:2])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _train_epoch(net, opt, data: _ImageSet, lr: float, diam_mean: float, cfg: TrainConfig,
                 epoch: int = 0, train_net=None, group=SINGLE, autocast: bool = False) -> tuple:
    """One epoch: ``(mean loss per crop, crops)`` over every process. ``train_net``: ``net``
    wrapped for several processes (DistributedDataParallel; None: ``net``). A global step takes
    ``cfg.batch_size`` crops of the epoch's order (:func:`kit.distributed.rank_batches`), each
    crop seeded by (seed, epoch, its position in the order), so the steps are the same whatever
    the number of processes and ``cfg.accumulate``. ``autocast``: the forward passes run
    under bfloat16 autocast (the caller's reading of ``cfg.amp_cpu`` on a CPU,
    :mod:`kit.models.precision`; ~1.75x faster per step on an AVX512-BF16 CPU); the loss and
    the weights stay float32."""
    import contextlib

    import torch

    train_net = net if train_net is None else train_net
    n = len(data)
    if cfg.nimg_per_epoch is None or cfg.nimg_per_epoch == n:
        order = np.random.permutation(n)
    else:
        order = np.random.choice(n, size=cfg.nimg_per_epoch, replace=True)
    for g in opt.param_groups:
        g["lr"] = lr
    train_net.train()
    steps = rank_batches(range(len(order)), cfg.batch_size, group, cfg.accumulate)
    micro = [[int(order[q]) for q in m] for step in steps for m in step]
    keys = [[[cfg.seed, epoch, q] for q in m] for step in steps for m in step]
    reads = data.batches(micro)
    total, count, k = 0.0, 0, 0
    for step in steps:
        opt.zero_grad()
        for j in range(len(step)):
            inds, batch = next(reads)
            imgi, lbl = _crops(data, inds, diam_mean, cfg, batch, keys[k])
            k += 1
            sync = j == len(step) - 1 or not group.distributed
            with (contextlib.nullcontext() if sync else train_net.no_sync()):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    y = train_net(torch.from_numpy(imgi).to(net.device))[0]
                loss = seg_loss(lbl, y.float())
                (loss / len(step)).backward()
            total += float(loss.item()) * len(inds)
            count += len(inds)
        opt.step()
    total, count = group.mean([total, count])
    return total / max(count, 1e-12), int(round(count * group.world))


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
