"""Mask R-CNN training loop: ``python -m kit.train maskrcnn --data DIR --fold K --out DIR ...``.

Stages (the seed's transfer recipe): with ``--livecell JSON --livecell-images DIR`` first
``train.livecell_epochs`` on LIVECell (classes = cell lines from the file-name prefix, or one
``cell`` class), then ``train.epochs`` on the Sartorius training fold, starting from the
LIVECell weights with the class-specific heads re-initialised. ``--pretrained FILE`` (torchvision,
kit or detectron2 weights, :func:`kit.models.maskrcnn.load_pretrained`) initialises the first
stage. Nothing is downloaded.

Per iteration: flips/rot90 + multi-scale (+ optional random crop) samples
(:mod:`kit.models.maskrcnn.data`), SGD or AdamW with linear warm-up then cosine/step decay,
AMP on CUDA (bfloat16 autocast on CPU with ``train.amp_cpu``), gradient clipping; a
non-finite loss skips the step (``max_nonfinite`` in a row abort the run). A step's global batch
is ``train.batch_size`` images: ``train.accumulate`` micro batches per process, and under
torchrun (:mod:`kit.distributed`) every rank trains its share through DistributedDataParallel
while rank 0 alone logs, validates and writes. Files in ``--out``:

* ``train_iter.csv`` -- one row per iteration: stage, epoch, iteration, lr, every loss, grad
  norm, finite flag, instances in the batch, seconds;
* ``checkpoints/last.pt`` -- written after every epoch (model, optimizer, AMP scaler, stage,
  epoch, iteration, best score): ``--resume`` continues from it;
* ``eval.csv`` -- validation MAP (:mod:`kit.metric`) every ``train.eval_every`` epochs and
  after the last, on the validation images ``fit`` is given (``kit.train``: an inner split of
  the training folds, never the held-out fold); the best epoch's weights are the model
  folder's ``model.pt`` + ``model.json``. A validation image without predictions scores 0
  (the metric's rule), so the MAP is never NaN; with no validation images the last epoch is kept;
* ``livecell_model.pt`` -- the LIVECell stage's final weights; ``train.log`` events.

``--time-budget MINUTES`` stops a stage when the budget is spent (counted from the start of
the run; the epoch then running ends early; each stage trains at least one step), evaluates,
saves the checkpoint and scores the best model; ``--resume`` continues later. Within the
budget the learning-rate schedule runs on time as well as iterations (:func:`lr_at`), so the
cosine decay ends when the budget does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

from kit.atomic import atomic_torch_save
from kit.distributed import SINGLE, micro_batch, rank_batches
from kit.distributed import current as current_group
from kit.heap import release_free_memory
from kit.models import torch_device
from kit.models.family import FitOptions, _no_log
from kit.models.livecell import livecell_classes
from kit.models.maskrcnn.config import ONE_CLASS, MaskRCNNConfig, load_config
from kit.models.precision import cpu_autocast
from kit.models.maskrcnn.model import MaskRCNNModel
from kit.models.maskrcnn.network import build_network
from kit.models.maskrcnn.weights import load_pretrained
from kit.models.schedule import BudgetClock
from kit.models.validation import CsvLog, evaluate

__all__ = ["fit", "lr_at", "evaluate", "livecell_classes"]

ITER_COLUMNS = ["stage", "epoch", "iteration", "lr", "loss", "loss_classifier", "loss_box_reg",
                "loss_mask", "loss_objectness", "loss_rpn_box_reg", "grad_norm", "finite",
                "n_instances", "seconds"]
EVAL_COLUMNS = ["stage", "epoch", "iteration", "map", "shsy5y", "astro", "cort", "n_images",
                "n_pred", "seconds", "best"]


def lr_at(it: int, total: int, tcfg, time_fraction: float = 0.0) -> float:
    """Learning rate at stage iteration ``it`` of ``total``: linear warm-up, then the schedule,
    whose progress is the larger of ``it / total`` and ``time_fraction`` (the elapsed share of
    a time budget, :class:`kit.models.schedule.BudgetClock`), so that a run a budget stops
    still decays."""
    base = tcfg.lr
    frac = max(min(it / max(total, 1), 1.0), time_fraction)
    if tcfg.schedule == "cosine":
        lr = base * 0.5 * (1.0 + math.cos(math.pi * frac))
    elif tcfg.schedule == "step":
        lr = base * 0.1 ** sum(frac >= s for s in tcfg.steps)
    else:
        lr = base
    if it < tcfg.warmup_iters:
        alpha = it / tcfg.warmup_iters
        lr *= tcfg.warmup_factor * (1 - alpha) + alpha
    return lr


def _optimizer(net, tcfg):
    import torch

    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # norms and biases: no weight decay
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tcfg.lr)
    return torch.optim.SGD(groups, lr=tcfg.lr, momentum=tcfg.momentum)


def _no_row(**row) -> None:
    pass


class _Trainer:
    """The stages of one run. With several processes (:mod:`kit.distributed`) every rank runs
    this, the network wrapped in DistributedDataParallel; rank 0 alone logs, validates and
    writes."""

    def __init__(self, cfg: MaskRCNNConfig, out: Path, log, device, group=SINGLE):
        self.cfg, self.out, self.device, self.group = cfg, out, device, group
        self.log = log if group.main else _no_log
        self.iter_csv = CsvLog(out / "train_iter.csv", ITER_COLUMNS) if group.main else _no_row
        self.eval_csv = CsvLog(out / "eval.csv", EVAL_COLUMNS) if group.main else _no_row
        self.ckpt = out / "checkpoints" / "last.pt"

    def _wrap(self, net):
        """``net`` for training in the group: SyncBatchNorm when ``train.sync_bn``, then
        DistributedDataParallel (one process: ``net`` itself)."""
        import torch

        if not self.group.distributed:
            return net
        if self.cfg.train.sync_bn:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only)")
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: a micro batch without positives leaves the mask head unused
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids,
                                                         find_unused_parameters=True)

    def run_stage(self, stage: str, records, classes, label_of, epochs: int, *, init=None,
                  resume=None, val=(), best=None, deadline=None, tcfg=None, keep=None):
        """Train one stage (``livecell``, ``sartorius`` or a specialist's); returns the network,
        the stage's config and the best-eval record ``{"map", "epoch", ...}`` (or None).

        ``tcfg`` replaces ``train`` (a specialist's learning rate); ``keep(model, record)`` saves
        an evaluation's model when it beats ``best`` (default: the model folder's ``model.pt``).
        Only the ``livecell`` and ``sartorius`` stages write ``checkpoints/last.pt``."""
        import torch

        from kit.models.maskrcnn.data import InstanceDataset, collate, repeat_by_type

        cfg, tcfg = self.cfg, tcfg or self.cfg.train
        mcfg = dataclasses.replace(cfg.model, classes=tuple(classes))
        # a specialist segments images of its own type: evaluated with the type given
        rule = {"cell_type": "given"} if stage.startswith("specialist") else {}
        stage_cfg = dataclasses.replace(cfg, model=mcfg, train=tcfg, **rule)
        group = self.group
        net = build_network(mcfg).to(self.device)
        opt = _optimizer(net, tcfg)
        # mixed precision: float16 + a loss scaler on CUDA (train.amp); bfloat16 autocast on CPU
        # (train.amp_cpu: the same code path where there is no GPU; bfloat16 needs no scaler)
        cuda = self.device.type == "cuda"
        use_amp = tcfg.amp if cuda else cpu_autocast(tcfg.amp_cpu)
        amp_dtype = torch.float16 if cuda else torch.bfloat16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cuda)
        start_epoch, iteration = 0, 0
        if resume is not None:
            net.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            start_epoch, iteration = int(resume["epoch"]), int(resume["iteration"])
            best = resume.get("best")
            self.log("resume", stage=stage, epoch=start_epoch, iteration=iteration)
        elif init is not None:
            report = load_pretrained(net, init, list(classes))
            self.log("pretrained", stage=stage, **report)
        repeat = dict(tcfg.repeat) if stage == "sartorius" else {}
        ds = InstanceDataset(repeat_by_type(records, repeat), label_of, mcfg.train_min_sizes,
                             mcfg.train_max_size, crop=tcfg.crop, hflip=tcfg.hflip, vflip=tcfg.vflip,
                             rot90=tcfg.rot90, seed=tcfg.seed)
        micro_batch(tcfg.batch_size, group.world, tcfg.accumulate)  # a ValueError if it does not divide
        train_net = self._wrap(net)
        if group.distributed:  # the same weights everywhere (DDP broadcast rank 0's); each rank
            # its own stream for what it draws while training (the RPN / ROI samplers' orders)
            torch.manual_seed(tcfg.seed * 1000 + 7919 * group.rank)
        per_epoch = math.ceil(len(ds) / tcfg.batch_size)
        if tcfg.max_iters_per_epoch:
            per_epoch = min(per_epoch, tcfg.max_iters_per_epoch) if per_epoch else 0
        total = per_epoch * epochs
        self.log("stage", stage=stage, n_images=len(ds), classes=list(classes), epochs=epochs,
                 iters_per_epoch=per_epoch, start_epoch=start_epoch, device=str(self.device),
                 processes=group.world, accumulate=tcfg.accumulate,
                 repeat=repeat,
                 autocast=str(amp_dtype).replace("torch.", "") if use_amp else None)
        params = [p for p in net.parameters() if p.requires_grad]
        nonfinite = 0
        # The Sartorius and specialist stages' schedule follows the time left to the deadline too
        # (a stage the budget stops still decays); a resumed run re-anneals over its new budget.
        timed = deadline is not None and stage != "livecell"
        clock = BudgetClock(max(deadline - time.time(), 0.0) if timed else None)
        for epoch in range(start_epoch, epochs):
            ds.set_epoch(epoch)
            gen = torch.Generator().manual_seed(tcfg.seed * 1000 + epoch)
            steps = rank_batches(torch.randperm(len(ds), generator=gen), tcfg.batch_size, group,
                                 tcfg.accumulate)[:per_epoch]
            loader = iter(torch.utils.data.DataLoader(
                ds, batch_sampler=[m for step_ in steps for m in step_], collate_fn=collate,
                num_workers=tcfg.num_workers))
            train_net.train()
            t_epoch = time.time()
            for step, micro in enumerate(steps):
                t0 = time.time()
                lr = lr_at(epoch * per_epoch + step, total, tcfg, clock.fraction())
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                parts, n_instances = {}, 0
                for j in range(len(micro)):
                    images, targets = next(loader)
                    images = [im.to(self.device, non_blocking=True) for im in images]
                    targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()}
                               for t in targets]
                    n_instances += sum(len(t["boxes"]) for t in targets)
                    # gradients are averaged over ranks by DDP at the last micro batch only
                    sync = j == len(micro) - 1 or not group.distributed
                    with (contextlib.nullcontext() if sync else train_net.no_sync()):
                        with torch.autocast(device_type=self.device.type, dtype=amp_dtype,
                                            enabled=use_amp):
                            losses = train_net(images, targets)
                        loss = sum(losses.values()) / len(micro)
                        # always backward (a NaN spreads to every rank's gradients, and then
                        # every rank skips the step alike)
                        scaler.scale(loss).backward()
                    for k, v in losses.items():
                        parts[k] = parts.get(k, 0.0) + float(v.detach()) / len(micro)
                names = sorted(parts)
                means = group.mean([parts[k] for k in names] + [n_instances])
                parts, n_instances = dict(zip(names, means[:-1])), int(round(means[-1] * group.world))
                loss_value = sum(parts.values())
                scaler.unscale_(opt)
                gn = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
                grad_norm = float(gn)
                # With AMP an overflow (inf grad) is the scaler's business: it skips the step
                # and lowers the scale. Without AMP a non-finite loss or grad skips it here.
                finite = (math.isfinite(grad_norm) and math.isfinite(loss_value)) or scaler.is_enabled()
                if finite:
                    scaler.step(opt)
                scaler.update()
                if not math.isfinite(loss_value):
                    grad_norm, finite = float("nan"), False
                nonfinite = 0 if finite else nonfinite + 1
                iteration += 1
                self.iter_csv(stage=stage, epoch=epoch, iteration=iteration, lr=lr,
                              loss=loss_value, **parts, grad_norm=grad_norm, finite=int(finite),
                              n_instances=n_instances, seconds=round(time.time() - t0, 3))
                if nonfinite >= tcfg.max_nonfinite:
                    self.log("error", stage=stage, message=f"{nonfinite} non-finite losses in a row")
                    raise RuntimeError(f"training diverged: {nonfinite} non-finite losses in a row "
                                       f"(stage {stage}, iteration {iteration}); lower train.lr or "
                                       f"raise train.warmup_iters")
                if group.any(clock.spent()):  # the learning rate has decayed to 0: end the epoch
                    break
            done = epoch + 1
            release_free_memory()  # the epoch's freed heap (kit.heap)
            self.log("epoch", stage=stage, epoch=done, iteration=iteration,
                     seconds=round(time.time() - t_epoch, 1))
            out_of_time = group.any(deadline is not None and time.time() >= deadline) and done < epochs
            if stage != "livecell" and val and (done % tcfg.eval_every == 0 or done == epochs
                                                     or out_of_time):
                if group.main:
                    best = self._evaluate(stage_cfg, net, val, stage, done, iteration, best, keep)
                    train_net.train()
                group.barrier()
            if group.main and stage in ("livecell", "sartorius"):
                atomic_torch_save({"stage": stage, "epoch": done, "iteration": iteration,
                                   "model": net.state_dict(), "optimizer": opt.state_dict(),
                                   "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                                   "best": best,
                                   "classes": list(classes)}, self.ckpt)
            if out_of_time:
                self.log("time_budget", stage=stage, epoch=done, of_epochs=epochs,
                         message="stopped by --time-budget; --resume continues")
                break
        return net, stage_cfg, best

    def _save_best(self, model, best) -> None:
        model.extra = {"trained": {"best_epoch": best["epoch"], "val_map": best["map"],
                                   "val_images": best["n_images"],
                                   "by_cell_type": best["by_cell_type"]}}
        model.save(self.out)

    def _evaluate(self, stage_cfg, net, val, stage, epoch, iteration, best, keep=None):
        t0 = time.time()
        recs = list(val)[: stage_cfg.train.eval_max_images or None]
        model = MaskRCNNModel(stage_cfg, net, self.device)
        res = evaluate(model, recs)
        net.train()
        improved = best is None or res["map"] > best["map"]
        if improved:
            best = {"map": res["map"], "epoch": epoch, "by_cell_type": res["by_cell_type"],
                    "n_images": res["n_images"]}
            (keep or self._save_best)(model, best)
        self._record_eval(stage, epoch, iteration, res, time.time() - t0, improved, best["epoch"])
        return best

    def _record_eval(self, stage, epoch, iteration, res, seconds, improved, best_epoch) -> None:
        """One evaluation's row of ``eval.csv`` and ``eval`` event."""
        self.eval_csv(stage=stage, epoch=epoch, iteration=iteration, map=res["map"],
                      **{k: res["by_cell_type"].get(k, "") for k in ("shsy5y", "astro", "cort")},
                      n_images=res["n_images"], n_pred=res["n_pred"],
                      seconds=round(seconds, 1), best=int(improved))
        self.log("eval", stage=stage, epoch=epoch, map=res["map"], by_cell_type=res["by_cell_type"],
                 n_pred=res["n_pred"], best_epoch=best_epoch)

    def run_specialists(self, records, val, classes, label_of, deadline) -> None:
        """``train.specialize``: per cell type, the model folder's all-type weights fine-tuned on
        that type's training images alone (``specialize_lr``, warm-up at most one pass), the
        epoch chosen on that type's validation images with the type given. Epoch 0 is the
        all-type weights: a specialist is saved only when it beats them there (without
        validation images of the type its last epoch is kept). Each stage gets an equal share
        of the time left to ``deadline``; specialists start over on ``--resume``."""
        tcfg = self.cfg.train
        todo = list(tcfg.specialize.items())
        folder = None
        if self.group.main:  # an earlier run's specialists go: these start from today's weights
            folder = MaskRCNNModel.load(self.out, device=str(self.device))
            folder.drop_specialists(self.out)
        given = dataclasses.replace(self.cfg, cell_type="given",
                                    model=dataclasses.replace(self.cfg.model, classes=tuple(classes)))
        for i, (cell_type, passes) in enumerate(todo):
            recs = [r for r in records if r.cell_type == cell_type]
            vals = [r for r in val if r.cell_type == cell_type][: tcfg.eval_max_images or None]
            if not recs:
                self.log("specialist_skipped", cell_type=cell_type, reason="no training images of this type")
                continue
            stage = f"specialist:{cell_type}"
            stage_tcfg = dataclasses.replace(
                tcfg, lr=tcfg.specialize_lr or tcfg.lr, repeat={},
                warmup_iters=min(tcfg.warmup_iters, math.ceil(len(recs) / tcfg.batch_size)))
            start = None
            if vals and self.group.main:
                t0 = time.time()
                res = evaluate(MaskRCNNModel(given, folder.net, self.device), vals)
                start = {"map": res["map"], "epoch": 0, "by_cell_type": res["by_cell_type"],
                         "n_images": res["n_images"]}
                self._record_eval(stage, 0, 0, res, time.time() - t0, False, 0)
            stage_deadline = (None if deadline is None
                              else time.time() + max(deadline - time.time(), 0.0) / (len(todo) - i))

            def keep(model, best, cell_type=cell_type, all_type=start):
                folder.save_specialist(self.out, cell_type, model.net, {
                    "epoch": best["epoch"], "val_map": best["map"], "val_images": best["n_images"],
                    "all_type_val_map": None if all_type is None else all_type["map"]})

            stage_cfg = dataclasses.replace(given, train=stage_tcfg)
            net, _, best = self.run_stage(stage, recs, classes, label_of, passes,
                                          init=self.out / MaskRCNNModel.WEIGHTS, val=vals, best=start,
                                          deadline=stage_deadline, tcfg=stage_tcfg, keep=keep)
            if self.group.main:
                if not vals:
                    keep(MaskRCNNModel(stage_cfg, net, "cpu"), {"epoch": None, "map": None,
                                                               "n_images": 0})
                kept = cell_type in folder.specialists
                self.log("specialist", cell_type=cell_type, kept=kept, images=len(recs),
                         val_images=len(vals), epoch=best["epoch"] if best else passes,
                         val_map=best["map"] if best else None,
                         all_type_val_map=start["map"] if start else None)
            self.group.barrier()


def fit(train_records, val_records, out: Path, options: FitOptions = FitOptions(),
        log=None) -> MaskRCNNModel:
    """The family protocol's ``fit``: stages, checkpoints, evaluation on ``val_records`` (an
    inner split of the training images: it chooses the best epoch); returns the best model.
    ``options.config``: a :class:`MaskRCNNConfig`, a YAML path or None (the default YAML)."""
    import torch

    out = Path(out)
    cfg = options.config if isinstance(options.config, MaskRCNNConfig) else load_config(options.config)
    if options.epochs is not None:
        if options.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {options.epochs}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=options.epochs))
    log = log or (lambda event, **fields: None)
    budget = options.time_budget_s
    deadline = None if budget is None else time.time() + budget
    # train.specialize keeps a share of the budget for the specialist stages
    stage_deadline = (deadline if deadline is None or not cfg.train.specialize
                      else time.time() + budget * (1.0 - cfg.train.specialize_share))
    group = current_group()
    device = torch_device(cfg.train.device)
    if device.type == "cuda" and group.distributed:
        device = torch.device("cuda", group.local_rank)
    torch.manual_seed(cfg.train.seed)
    trainer = _Trainer(cfg, out, log, device, group)
    state = None
    if options.resume:
        if not trainer.ckpt.is_file():
            raise ValueError(f"--resume: no checkpoint at {trainer.ckpt}")
        state = torch.load(trainer.ckpt, map_location="cpu", weights_only=True)
    pretrained = options.pretrained
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"--pretrained: file not found: {pretrained}")
    classes = list(cfg.model.classes)
    if tuple(classes) == ONE_CLASS:  # every instance is a "cell"; the image's type is given
        label_of = lambda r: 1  # noqa: E731
    else:
        unknown = sorted({r.cell_type for r in train_records} - set(classes))
        if unknown:
            raise ValueError(f"train images of cell type(s) {unknown} are not in model.classes "
                             f"{classes}")
        label_of = lambda r: classes.index(r.cell_type) + 1  # noqa: E731

    lc = list(options.livecell)
    if lc and cfg.train.livecell_epochs == 0:
        log("livecell_skipped", reason="train.livecell_epochs is 0")
    init = pretrained
    if lc and cfg.train.livecell_epochs > 0:
        lc_path = out / "livecell_model.pt"
        if state is not None and state["stage"] == "sartorius":
            init = None  # LIVECell stage already done
        else:
            names, label = livecell_classes(lc, cfg.train.livecell_labels)
            resume = state if state is not None and state["stage"] == "livecell" else None
            net, _, _ = trainer.run_stage("livecell", lc, names, lambda r: label[r.id],
                                          cfg.train.livecell_epochs, init=pretrained, resume=resume,
                                          deadline=stage_deadline)
            if group.main:
                atomic_torch_save({"model": net.state_dict(), "classes": list(names), "stage": "livecell"},
                                  lc_path)
            group.barrier()  # every rank starts the next stage from the file
            trainer.log("livecell_done", weights=str(lc_path), classes=names)
            state = None
            init = lc_path
    resume = state if state is not None and state["stage"] == "sartorius" else None
    net, stage_cfg, best = trainer.run_stage(
        "sartorius", train_records, classes, label_of,
        cfg.train.epochs, init=init, resume=resume, val=list(val_records), deadline=stage_deadline)
    if group.main:
        if best is None:  # no validation images (or no epochs): keep the last weights
            MaskRCNNModel(stage_cfg, net, "cpu", extra={"trained": {"best_epoch": None}}).save(out)
            log("saved_last", reason="no validation images")
        else:
            log("best", **best)
    del net  # the specialists start from the saved best weights
    if cfg.train.specialize:
        group.barrier()  # every rank starts the specialists from the saved model.pt
        trainer.run_specialists(train_records, list(val_records), classes, label_of, deadline)
    if not group.main:
        return None  # rank 0 saves and returns the model
    return MaskRCNNModel.load(out, device=str(device))
