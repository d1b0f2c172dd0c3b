"""Cellpose cell-type specialists (``train.specialize``): the final all-type network fine-tuned
on one cell type's training images alone, kept only if it segments that type's validation
images better than the all-type network.

Per entry ``cell type: epochs`` of ``train.specialize``, after the model folder is written:

1. a copy of the all-type network as saved (BatchNorm recalibrated) trains on that type's
   training images with the all-type stage's loss, crops and batch size, for up to ``epochs``
   epochs: learning rate ``specialize_lr`` (0 = ``lr``), warm-up at most one epoch, and with a
   time budget an equal share of the time left and the budget's halving tail
   (:func:`kit.models.schedule.halving_tail`). Its rows in ``epochs.csv`` have stage
   ``specialist:<type>``;
2. its BatchNorm statistics are recomputed on crops of that type's images;
3. both networks segment that type's validation images (the type given, the config's settings
   of that type, the all-type diameter): the specialist is saved as ``cellpose_net_<type>`` and
   listed in ``model.json`` only if its MAP there is strictly higher. Without validation images
   of the type it is kept (nothing can choose).

Specialists train in one process and start over on ``--resume`` (they are not checkpointed).
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kit.heap import release_free_memory
from kit.models.cellpose.config import specialist_weights
from kit.models.cellpose.data import _prepare
from kit.models.cellpose.model import CellposeSegmenter
from kit.models.cellpose.steps import (_make_optimizer, _seed_all, _train_epoch, learning_rates,
                                       recalibrate_batchnorm)
from kit.models.schedule import BudgetClock, halving_tail
from kit.models.validation import evaluate

STAGE = "specialist:{}"


def _train(run, net, data, epochs: int, budget_s: float | None, stage: str, epoch_log,
           autocast: bool) -> int:
    """Fine-tune ``net`` on ``data`` for up to ``epochs`` epochs within ``budget_s`` seconds;
    returns the epochs run."""
    tcfg = run.cfg.train
    rates = learning_rates(epochs, tcfg.specialize_lr or tcfg.lr, min(tcfg.warmup_epochs, 1))
    opt = _make_optimizer(net, tcfg)
    clock = BudgetClock(budget_s)
    done = 0
    for e in range(epochs):
        t_ep = time.time()
        g = run.done + e  # crop seeds apart from the all-type stage's epochs
        _seed_all(tcfg.seed, g)
        lr = float(rates[e]) * halving_tail(clock.fraction())
        loss, n_crops = _train_epoch(net, opt, data, lr, run.cfg.diam_mean, tcfg, epoch=g,
                                     autocast=autocast)
        release_free_memory()
        if not math.isfinite(loss):
            raise RuntimeError(f"{stage}: training diverged: loss is {loss} at epoch {e + 1}; "
                               "lower train.specialize_lr")
        done = e + 1
        if epoch_log is not None:
            epoch_log.write(epoch=g + 1, stage=stage, stage_epoch=done, lr=lr,
                            train_loss=round(loss, 6), val_loss="",
                            seconds=round(time.time() - t_ep, 2), n_crops=n_crops)
        if clock.spent():
            break
    return done


def fit_specialists(run, train_records, val_records, deadline: float | None, epoch_log,
                    autocast: bool, log: Callable) -> dict:
    """Train, choose and save the specialists of ``run.cfg.train.specialize`` (module doc) in
    the model folder ``run.out``, whose ``model.json`` and all-type network ``run.net`` are
    written already; ``deadline``: ``time.time()`` by which they are all done (None: no
    budget). Returns ``model.json``'s ``specialists`` section (cell type -> how it was chosen);
    ``log`` gets one ``specialist`` (or ``specialist_skipped``) event per type."""
    tcfg = run.cfg.train
    todo = list(tcfg.specialize.items())
    general = CellposeSegmenter.load(run.out)
    listed = {}
    for i, (cell_type, epochs) in enumerate(todo):
        stage = STAGE.format(cell_type)
        recs = [r for r in train_records if r.cell_type == cell_type]
        vals = [r for r in val_records if r.cell_type == cell_type]
        data = _prepare(recs, tcfg.min_train_masks, run.device, stage, False) if recs else None
        if data is None or not len(data):
            log("specialist_skipped", cell_type=cell_type,
                reason=f"no training image of this type with >= {tcfg.min_train_masks} masks")
            continue
        t0 = time.time()
        budget = None if deadline is None else max(deadline - t0, 0.0) / (len(todo) - i)
        net = copy.deepcopy(run.net)
        ran = _train(run, net, data, epochs, budget, stage, epoch_log, autocast)
        recalibrate_batchnorm(net, data, run.cfg.diam_mean, tcfg)
        net.diam_labels.data.fill_(float(np.mean(data.diam)))
        seconds = time.time() - t0
        name = specialist_weights(cell_type)
        tmp = run.out / (name + ".tmp")
        net.save_model(str(tmp))
        special = copy.copy(general)  # the all-type model with this specialist
        special.specialists = {cell_type: CellposeSegmenter.load_network(tmp, run.cfg)}
        score = evaluate(special, vals)["map"] if vals else None
        base = evaluate(general, vals)["map"] if vals else None
        kept = not vals or score > base
        if kept:
            tmp.replace(run.out / name)
            listed[cell_type] = {"weights": name, "epochs": ran, "images": len(data),
                                 "val_images": len(vals), "val_map": score,
                                 "all_type_val_map": base, "train_seconds": round(seconds, 1)}
        else:
            tmp.unlink()
        log("specialist", cell_type=cell_type, kept=kept, epochs=ran, images=len(data),
            val_images=len(vals), val_map=score, all_type_val_map=base,
            seconds=round(time.time() - t0, 1))
    return listed


def drop_stale(out: Path) -> None:
    """Delete an earlier run's specialist weights files in ``out``."""
    from kit import CELL_TYPES

    for ct in CELL_TYPES:
        (out / specialist_weights(ct)).unlink(missing_ok=True)
