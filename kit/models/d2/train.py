"""detectron2 training: ``python -m kit.train detectron2 --data DIR --fold K --out DIR ...``.

detectron2's own ``DefaultTrainer`` (its model, optimizer, LR scheduler, data loader,
``DatasetMapper`` augmentations, ``DetectionCheckpointer`` and hooks) on the training records,
registered as a detectron2 dataset (:mod:`kit.models.d2.data`), with the kit's hooks instead
of detectron2's COCO evaluator and TensorBoard writer:

* :class:`ValidationHook` -- every ``train.eval_every_epochs`` passes over the training images
  and at the end, the validation MAP by :mod:`kit.metric` on the validation records ``fit`` is
  given (``kit.train``: an inner split of the training folds, never the held-out fold); an
  image without predictions scores 0, so the MAP is never NaN (unlike the COCO evaluator the
  seed's notebook used). The best one's weights become the model folder (``model.json``,
  ``detectron2.yaml``, ``model.pth``); with no validation images the last weights are kept;
* :class:`IterationLog` -- ``train_iter.csv``, one row per iteration (epoch, iteration, lr,
  every loss, seconds); detectron2's own ``metrics.json`` and console lines stay;
* :class:`BudgetCosine` -- with ``--time-budget`` and ``train.budget_cosine``, the learning rate
  (whatever detectron2's scheduler says) times a cosine of the elapsed share of the budget, so
  it reaches 0 when the budget ends.

With ``--livecell`` (records of LIVECell's json) and ``train.livecell_epochs`` > 0, a LIVECell
stage comes first: the same trainer on the LIVECell images, its classes the cell lines or one
``cell`` (``train.livecell_labels``, :mod:`kit.models.livecell`), no validation; its final
weights (``livecell_model.pth``) start the Sartorius stage, whose box and mask predictors are
new (other classes: detectron2's checkpointer skips the weights whose shapes differ).

``--time-budget MINUTES`` counts from the start of the run and ends a stage after the iteration
that spends it (each stage runs at least one); the budget cosine covers the Sartorius stage,
over the time left when it starts. ``checkpoints/`` (``checkpoints/livecell/`` for the LIVECell
stage) then holds detectron2's ``model_last.pth`` (model, optimizer, scheduler, iteration, the
best validation so far) and ``--resume`` continues from it: the stage that was running, or the
Sartorius stage once ``livecell_model.pth`` is written. Files in ``--out``: ``train_iter.csv``
(both stages, a ``stage`` column), ``eval.csv``, ``checkpoints/``, ``livecell_model.pth``, the
model folder files.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from kit.models.d2.config import Detectron2Config, build_cfg, load_config, require_detectron2
from kit.models.d2.model import Detectron2Model
from kit.models.family import FitOptions
from kit.models.schedule import BudgetClock
from kit.models.validation import CsvLog, evaluate

__all__ = ["fit", "ITER_COLUMNS", "EVAL_COLUMNS"]

LOSSES = ["loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"]
ITER_COLUMNS = ["stage", "epoch", "iteration", "lr", "loss", *LOSSES, "seconds"]
EVAL_COLUMNS = ["epoch", "iteration", "map", "shsy5y", "astro", "cort", "n_images", "n_pred",
                "seconds", "best"]
CHECKPOINT = "model_last"


def _hooks():
    """The kit's hook classes (defined once detectron2 is importable)."""
    from detectron2.engine import HookBase

    class ValidationHook(HookBase):
        """Validation MAP every ``period`` iterations and after the last; keeps the best
        weights as the model folder. Its state (the best so far) is saved in checkpoints."""

        def __init__(self, run, period: int):
            self.run, self.period = run, period
            self.best = None
            self.last_done = -1

        def after_step(self):
            done = self.trainer.iter + 1
            if self.period and done % self.period == 0:
                self.validate(done)

        def after_train(self):
            done = self.trainer.iter + 1
            if self.trainer.ran and done != self.last_done:
                self.validate(done)

        def validate(self, done: int):
            run = self.run
            self.last_done = done
            if not run.val:
                return
            t0 = time.time()
            net = self.trainer.model
            model = Detectron2Model(run.config, run.cfg, net, extra={})
            res = evaluate(model, run.val[: run.config.train.eval_max_images or None])
            net.train()
            improved = self.best is None or res["map"] > self.best["map"]
            epoch = run.epoch(done)
            if improved:
                self.best = {"map": res["map"], "iteration": done, "epoch": epoch,
                             "by_cell_type": res["by_cell_type"]}
                model.extra = {"trained": {"best_iteration": done, "best_epoch": epoch,
                                           "val_map": res["map"], "val_images": res["n_images"],
                                           "by_cell_type": res["by_cell_type"]}}
                model.save(run.out)
            run.eval_csv(epoch=epoch, iteration=done, map=res["map"],
                         **{k: res["by_cell_type"].get(k, "") for k in ("shsy5y", "astro", "cort")},
                         n_images=res["n_images"], n_pred=res["n_pred"],
                         seconds=round(time.time() - t0, 1), best=int(improved))
            run.log("eval", iteration=done, epoch=epoch, map=res["map"],
                    by_cell_type=res["by_cell_type"], n_pred=res["n_pred"],
                    best_iteration=self.best["iteration"])
            self.trainer.checkpointer.save(CHECKPOINT)

        def state_dict(self):
            return {"best": self.best}

        def load_state_dict(self, state):
            self.best = state.get("best")

    class IterationLog(HookBase):
        """``train_iter.csv``: one row per iteration from detectron2's event storage."""

        def __init__(self, run):
            self.run = run
            self.t0 = time.time()

        def before_step(self):
            self.t0 = time.time()

        def after_step(self):
            latest = self.trainer.storage.latest()
            value = {k: v[0] for k, v in latest.items()}
            done = self.trainer.iter + 1
            self.run.iter_csv(stage=self.run.stage, epoch=round(self.run.epoch(done), 3), iteration=done,
                              lr=value.get("lr", ""), loss=value.get("total_loss", ""),
                              **{k: value.get(k, "") for k in LOSSES},
                              seconds=round(time.time() - self.t0, 3))

    class BudgetCosine(HookBase):
        """Scales every param group's learning rate by ``(1 + cos(pi * f)) / 2``, ``f`` the
        elapsed share of the time budget, before each step. detectron2's scheduler sets the
        rate afresh after every step (``base_lr * multiplier``), so the scaling never piles up."""

        def __init__(self, clock: BudgetClock):
            self.clock = clock

        def before_step(self):
            factor = 0.5 * (1.0 + math.cos(math.pi * self.clock.fraction()))
            for group in self.trainer.optimizer.param_groups:
                group["lr"] *= factor

    return ValidationHook, IterationLog, BudgetCosine


class _Run:
    """What the kit's hooks share in one stage: configs, records, output files, the log, the
    clock (``stop``: the run's, ends the stage) and whether the budget cosine applies."""

    def __init__(self, config, cfg, out: Path, val, n_train: int, log, clock: BudgetClock,
                 stage: str = "sartorius", cosine: bool = True):
        self.config, self.cfg, self.out, self.val = config, cfg, out, list(val)
        self.n_train, self.log, self.clock = n_train, log, clock
        self.stage, self.cosine = stage, cosine
        self.iter_csv = CsvLog(out / "train_iter.csv", ITER_COLUMNS)
        self.eval_csv = CsvLog(out / "eval.csv", EVAL_COLUMNS)

    def epoch(self, iterations: int) -> float:
        """Passes over the training images after ``iterations`` steps."""
        return iterations * self.cfg.SOLVER.IMS_PER_BATCH / max(self.n_train, 1)

    def iterations_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_train / self.cfg.SOLVER.IMS_PER_BATCH))


def _trainer(cfg, run: _Run):
    """detectron2's ``DefaultTrainer`` with the kit's data mapper, hooks, writers and a loop
    that stops when the time budget is spent."""
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter

    from kit.models.d2.data import train_mapper

    ValidationHook, IterationLog, BudgetCosine = _hooks()

    class KitTrainer(DefaultTrainer):
        def __init__(self, cfg):
            self.ran = False
            super().__init__(cfg)

        def build_train_loader(self, cfg):
            return build_detection_train_loader(cfg, mapper=train_mapper(cfg, run.config.train.vflip))

        def build_writers(self):
            return [CommonMetricPrinter(self.max_iter),
                    JSONWriter(str(Path(self.cfg.OUTPUT_DIR) / "metrics.json"))]

        def build_hooks(self):
            period = run.iterations_per_epoch() * run.config.train.eval_every_epochs
            self.validation = ValidationHook(run, period)
            timed = run.cosine and run.clock.budget_s is not None and run.config.train.budget_cosine
            return [hooks.IterationTimer(), hooks.LRScheduler(),
                    *([BudgetCosine(run.clock)] if timed else []),
                    IterationLog(run), self.validation,
                    hooks.PeriodicWriter(self.build_writers(), period=20)]

        def train(self):
            """detectron2's loop (``TrainerBase.train``), ending early once the budget is
            spent; ``self.iter`` is the last iteration run, as in detectron2's checkpoints."""
            start = self.start_iter
            self.iter = start - 1
            with EventStorage(start) as self.storage:
                try:
                    self.before_train()
                    for self.iter in range(start, self.max_iter):
                        self.before_step()
                        self.run_step()
                        self.after_step()
                        self.ran = True
                        if run.clock.spent():
                            run.log("time_budget", stage=run.stage, iteration=self.iter + 1,
                                    message="stopped by --time-budget; --resume continues")
                            break
                finally:
                    self.after_train()
            if self.ran:
                self.checkpointer.save(CHECKPOINT)

    return KitTrainer(cfg)


def _stage_trainer(cfg, dataset: str, output_dir: Path, run: _Run, resume: bool):
    """detectron2's trainer of one stage: ``cfg`` (not yet frozen) set to train on the
    registered ``dataset`` with checkpoints in ``output_dir`` and the kit's validation instead of
    detectron2's, then frozen; weights seeded, then loaded: the stage's last checkpoint when
    ``resume`` and one is there, else ``cfg.MODEL.WEIGHTS``."""
    import torch

    output_dir.mkdir(parents=True, exist_ok=True)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = ()
    cfg.TEST.EVAL_PERIOD = 0      # the kit's ValidationHook evaluates
    cfg.freeze()
    torch.manual_seed(max(cfg.SEED, 0))
    trainer = _trainer(cfg, run)
    trainer.resume_or_load(resume=resume and (output_dir / "last_checkpoint").is_file())
    return trainer


def _pretrained_file(path) -> str:
    p = Path(path)
    if p.is_dir():
        p = p / "model.pth"
    if not p.is_file():
        raise FileNotFoundError(f"--pretrained: file not found: {p}")
    return str(p)


def _livecell_stage(config, cfg, records, out: Path, options: FitOptions, log,
                    clock: BudgetClock) -> str:
    """Train the LIVECell stage (module doc) unless a resumed run has it done already; returns
    the path of its weights, ``out/livecell_model.pth``."""
    from kit.atomic import atomic_torch_save
    from kit.models.d2.data import register
    from kit.models.livecell import livecell_classes

    weights = out / "livecell_model.pth"
    stage_dir = out / "checkpoints" / "livecell"
    if options.resume and weights.is_file():
        log("livecell_done", weights=str(weights), resumed=True)
        return str(weights)
    names, label = livecell_classes(records, config.train.livecell_labels)
    lc = cfg.clone()
    lc.MODEL.ROI_HEADS.NUM_CLASSES = len(names)
    lc.SOLVER.MAX_ITER = max(1, math.ceil(config.train.livecell_epochs * len(records)
                                          / lc.SOLVER.IMS_PER_BATCH))
    if config.train.livecell_max_iter:
        lc.SOLVER.MAX_ITER = min(lc.SOLVER.MAX_ITER, config.train.livecell_max_iter)
    run = _Run(config, lc, out, [], len(records), log, clock, stage="livecell", cosine=False)
    trainer = _stage_trainer(lc, register(records, names, "livecell", lambda r: label[r.id] - 1),
                             stage_dir, run, options.resume)
    log("stage", stage="livecell", n_images=len(records), classes=names, max_iter=lc.SOLVER.MAX_ITER,
        start_iter=trainer.start_iter, iters_per_epoch=run.iterations_per_epoch())
    trainer.train()
    atomic_torch_save({"model": trainer.model.state_dict()}, weights)
    log("livecell_done", weights=str(weights), classes=names, iterations=trainer.iter + 1)
    return str(weights)


def fit(train_records, val_records, out: Path, options: FitOptions = FitOptions(),
        log=None) -> Detectron2Model:
    """The family protocol's ``fit`` (module doc). ``options.config``: a
    :class:`Detectron2Config`, a YAML path or None (``kit/configs/detectron2.yaml``)."""
    require_detectron2()
    from kit.models import torch_device
    from kit.models.d2.data import register

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda event, **fields: None)
    where = "config" if options.config is None or isinstance(options.config, Detectron2Config) \
        else str(options.config)
    config = options.config if isinstance(options.config, Detectron2Config) \
        else load_config(options.config)
    device = torch_device(config.train.device)
    cfg = build_cfg(config, where, device.type)
    train_records = list(train_records)
    unknown = sorted({r.cell_type for r in train_records} - set(config.classes), key=str)
    if unknown:
        raise ValueError(f"train images of cell type(s) {unknown} are not in classes "
                         f"{list(config.classes)}")
    if options.epochs is not None:
        if options.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {options.epochs}")
        cfg.SOLVER.MAX_ITER = math.ceil(options.epochs * len(train_records) / cfg.SOLVER.IMS_PER_BATCH)
    if options.pretrained is not None:
        cfg.MODEL.WEIGHTS = _pretrained_file(options.pretrained)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    if options.resume and not (checkpoints / "last_checkpoint").is_file() \
            and not (checkpoints / "livecell" / "last_checkpoint").is_file():
        raise ValueError(f"--resume: no checkpoint in {checkpoints}")
    clock = BudgetClock(options.time_budget_s)  # the whole run's
    livecell = list(options.livecell)
    if livecell and config.train.livecell_epochs == 0:
        log("livecell_skipped", reason="train.livecell_epochs is 0")
    elif livecell:
        cfg.MODEL.WEIGHTS = _livecell_stage(config, cfg, livecell, out, options, log, clock)
    left = None if clock.budget_s is None else max(clock.budget_s * (1.0 - clock.fraction()), 0.0)
    run = _Run(config, cfg, out, val_records, len(train_records), log,
               clock if not livecell else BudgetClock(left))
    trainer = _stage_trainer(cfg, register(train_records, config.classes), checkpoints, run,
                             options.resume)
    log("stage", stage="sartorius", n_images=len(train_records), classes=list(config.classes),
        init=cfg.MODEL.WEIGHTS or None,
        max_iter=cfg.SOLVER.MAX_ITER, start_iter=trainer.start_iter,
        iters_per_epoch=run.iterations_per_epoch(), device=str(device))
    if options.resume:
        log("resume", iteration=trainer.start_iter, best=trainer.validation.best)
    trainer.train()
    best = trainer.validation.best
    if best is None or not (out / "model.json").is_file():
        Detectron2Model(config, cfg, trainer.model, extra={"trained": {"best_iteration": None}}).save(out)
        log("saved_last", reason="no validation images")
    else:
        log("best", **best)
    return Detectron2Model.load(out, device=str(device))
