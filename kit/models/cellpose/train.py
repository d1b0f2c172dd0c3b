"""Cellpose training: the epoch loop on cellpose's network, loss and augmentation
(:mod:`kit.models.cellpose.steps`), exact resume from ``checkpoint.pt``, BatchNorm
recalibration, the SizeModel, the model folder and the specialists.

Under torchrun (:mod:`kit.distributed`) every rank runs the epoch loop on its share of each
global batch (``train.batch_size`` crops, ``train.accumulate`` micro batches per rank) through
DistributedDataParallel; each crop's augmentation is seeded by (seed, epoch, its position in
the epoch's order), so a step trains on the same crops whatever the number of processes. Rank 0
alone writes ``epochs.csv`` and checkpoints, computes the validation loss, and recalibrates
BatchNorm, fits the SizeModel and writes the model folder after training."""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kit import package_versions
from kit.atomic import atomic_open, atomic_torch_save
from kit.distributed import SINGLE, micro_batch
from kit.distributed import current as current_group
from kit.heap import release_free_memory
from kit.models import torch_device
from kit.models.cellpose.config import (CHECKPOINT, CONFIG_COPY, DEFAULT_CONFIG, EPOCH_COLUMNS,
                                        EPOCH_LOG, SIZE_MODEL, WEIGHTS, CellposeConfig,
                                        SizeModelConfig, TrainConfig, _train_section, load_config)
from kit.models.cellpose.data import _ImageSet, _median_diameters, _prepare, targets_cache_dir
from kit.models.cellpose.model import CellposeSegmenter
from kit.models.cellpose.network import _load_state_dict, _new_cellpose_model, _resolve_weights
from kit.models.cellpose.steps import (_make_optimizer, _seed_all, _train_epoch, _val_loss,
                                       learning_rates, recalibrate_batchnorm)
from kit.models.family import FitOptions
from kit.models.precision import cpu_autocast, cpu_has_native_bf16
from kit.models.schedule import BudgetClock, halving_tail


def _write_json(obj, path: Path) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Training


class _EpochLog:
    """``epochs.csv``: one row per finished epoch; rows after a checkpoint are dropped on resume,
    and so are the specialists' rows (stage ``specialist:<type>``: they train again)."""

    def __init__(self, path: Path, keep_through: int):
        self.path = path
        rows = []
        if keep_through > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_through
                        and not r["stage"].startswith("specialist")]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, EPOCH_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, EPOCH_COLUMNS).writerow(row)


@dataclass
class _Run:
    """What one :func:`fit` call works on: config, folder, data, network, and how far it got."""

    cfg: CellposeConfig
    out: Path
    data: _ImageSet
    pre: _ImageSet | None
    val: _ImageSet | None
    net: object
    device: object
    pretrained: Path | None
    done: int = 0                 # epochs finished (of every stage)
    opt_state: dict | None = None  # optimiser state restored from the checkpoint
    seconds_before: float = 0.0   # training seconds of earlier calls (resume)
    stopped: str | None = None    # why training stopped early ("time budget", "epoch budget")
    group: object = SINGLE        # the processes training together (kit.distributed)
    train_net: object = None      # ``net`` wrapped for several processes (None: one process)

    @functools.cached_property
    def autocast(self) -> bool:
        """Training forward passes under bfloat16 autocast (``train.amp_cpu`` on a CPU), read
        once per run: the all-type epochs and the specialists use the same answer."""
        return self.device.type == "cpu" and cpu_autocast(self.cfg.train.amp_cpu)

    @property
    def stages(self) -> list:
        """``(name, epochs, images)`` of each stage: LIVECell pretraining (if any), then train."""
        t = self.cfg.train
        return ([("pretrain", t.livecell_epochs, self.pre)] if self.pre is not None else []) + \
            [("train", t.epochs, self.data)]

    @property
    def total_epochs(self) -> int:
        return sum(n for _, n, _ in self.stages)

    def save_checkpoint(self, opt, seconds: float) -> None:
        atomic_torch_save({"epoch": self.done, "net": self.net.state_dict(),
                           "optimizer": opt.state_dict() if opt is not None else None,
                           "train_config": _train_section(self.cfg), "train_ids": self.data.ids,
                           "pretrained": str(self.pretrained) if self.pretrained else None,
                           "train_seconds": seconds}, self.out / CHECKPOINT)


def resolve_config(config) -> tuple[CellposeConfig, Path | None]:
    """``(config, its YAML path or None)`` of a :class:`kit.models.family.FitOptions` ``config``:
    a :class:`CellposeConfig`, a YAML path, or None (the default YAML)."""
    if isinstance(config, CellposeConfig):
        return config, None
    path = Path(config) if config is not None else DEFAULT_CONFIG
    return load_config(path), path


def fit(train_records, val_records, out_dir, options: FitOptions = FitOptions(),
        log: Callable | None = None) -> CellposeSegmenter:
    """Train on ``train_records`` (:class:`kit.data.ImageRecord` with RLEs), save the model
    folder ``out_dir`` and return the loaded model (the family protocol's ``fit``).

    ``options`` (:class:`kit.models.family.FitOptions`): ``config`` (object, YAML path or None =
    default) with ``epochs`` overriding ``train.epochs``; ``livecell`` records are trained on
    first for ``train.livecell_epochs``; ``pretrained``: a CPnet weights file or a kit cellpose
    model folder to start from (checked to exist; its ``diam_mean`` must equal the config's);
    ``resume``: continue from ``out_dir/checkpoint.pt`` (same config ``train`` section and
    ``diam_mean``, same training images); without it an existing checkpoint is an error, not
    overwritten. Training stops early after ``time_budget_s`` seconds of epochs or
    ``stop_after_epochs`` epochs of this call (the checkpoint is saved; ``resume`` continues);
    the model folder is written either way and says in ``model.json`` ``training`` how many
    epochs it has. ``log(event, **fields)`` receives progress events (kit.train's
    ``train.log``); ``val_records`` feed the monitoring loss (``train.eval_every``) and decide
    whether each ``train.specialize`` specialist is kept (:mod:`kit.models.cellpose.specialists`,
    trained after the folder is written, in ``train.specialize_share`` of ``time_budget_s``).
    """
    import torch

    cfg, config_path = resolve_config(options.config)
    if options.epochs is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=options.epochs))
    budget = options.time_budget_s
    deadline = None if budget is None else time.time() + budget
    if cfg.train.specialize and budget is not None:  # the specialists' share of the budget
        options = dataclasses.replace(options, time_budget_s=budget * (1.0 - cfg.train.specialize_share))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda event, **fields: None)
    pretrained = _check_start(out, cfg, options, list(train_records))

    group = current_group()
    device = torch_device("auto")
    if device.type == "cuda" and group.distributed:
        device = torch.device("cuda", group.local_rank)
    micro_batch(cfg.train.batch_size, group.world, cfg.train.accumulate)  # ValueError if it does not divide
    data, pre, val = _load_data(train_records, val_records, options.livecell, cfg, device,
                                options.progress and group.main, log)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.train.seed)  # the random initial weights, too, are a function of the seed
    run = _Run(cfg, out, data, pre, val, _new_cellpose_model(cfg.diam_mean, inference=False, width=cfg.width).net,
               device, pretrained, group=group)
    np_state = np.random.get_state()
    try:
        _restore(run, options.resume, log)
        run.train_net = _wrap(run.net, cfg.train, device, group)
        seconds = _train_stages(run, options, log)
    finally:
        np.random.set_state(np_state)  # the caller's random streams are left as they were
        torch.random.set_rng_state(torch_state)
    if not group.main:
        return None  # rank 0 writes the model folder, trains the specialists, returns the model
    _write_model_folder(run, seconds, config_path, log)
    _specialists(run, train_records, val_records, deadline, log)
    return CellposeSegmenter.load(out)


def _specialists(run: _Run, train_records, val_records, deadline, log: Callable) -> None:
    """``train.specialize`` (:mod:`kit.models.cellpose.specialists`, in this process alone):
    train and choose them, list the kept ones in ``model.json``; an earlier run's specialist
    files go first."""
    from kit.models.cellpose.specialists import drop_stale, fit_specialists

    drop_stale(run.out)
    if not run.cfg.train.specialize:
        return
    epoch_log = _EpochLog(run.out / EPOCH_LOG, keep_through=run.done)
    listed = fit_specialists(run, list(train_records), list(val_records), deadline, epoch_log,
                             run.autocast, log)
    doc = json.loads((run.out / "model.json").read_text())
    doc["specialists"] = listed
    _write_json(doc, run.out / "model.json")


def _wrap(net, tcfg: TrainConfig, device, group):
    """``net`` for training in several processes: SyncBatchNorm when ``train.sync_bn`` (CUDA),
    then DistributedDataParallel; None with one process (``net`` trains as it is)."""
    import torch

    if not group.distributed:
        return None
    if tcfg.sync_bn:
        if device.type != "cuda":
            raise ValueError("train.sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only)")
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def _check_start(out: Path, cfg: CellposeConfig, options: FitOptions, train_records) -> Path | None:
    """Checks before any heavy work; returns the resolved ``pretrained`` weights path."""
    tcfg = cfg.train
    ckpt_path = out / CHECKPOINT
    if options.resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out} to resume from")
    if not options.resume and ckpt_path.is_file():
        raise ValueError(f"{out} holds a {CHECKPOINT} of an earlier run: pass --resume to continue "
                         "it, or choose another --out")
    pretrained = _resolve_weights(options.pretrained) if options.pretrained is not None else None
    if tcfg.livecell_epochs and not options.livecell:
        raise ValueError(f"train.livecell_epochs is {tcfg.livecell_epochs} but no pretraining "
                         "images were given (kit.train: --livecell JSON --livecell-images DIR)")
    if options.livecell and not tcfg.livecell_epochs:
        raise ValueError("pretraining images were given but train.livecell_epochs is 0")
    if not train_records:
        raise ValueError("no training images")
    return pretrained


def _load_data(train_records, val_records, pretrain_records, cfg: CellposeConfig, device,
               progress: bool, log: Callable):
    """``(train, pretrain or None, validation or None)`` image sets."""
    tcfg = cfg.train
    t_prep = time.time()
    data = _prepare(train_records, tcfg.min_train_masks, device, "cellpose data", progress)
    if not len(data):
        raise ValueError(f"no training image has >= {tcfg.min_train_masks} masks "
                         "(train.min_train_masks)")
    pre = (_prepare(pretrain_records, tcfg.min_train_masks, device, "pretrain data", progress)
           if tcfg.livecell_epochs else None)
    val = (_prepare(val_records, 1, device, "validation data", progress)
           if tcfg.eval_every and val_records else None)
    built = sum(s.built for s in (data, pre, val) if s is not None)
    log("cellpose_data", n_train=len(data), skipped=data.skipped,
        n_pretrain=len(pre) if pre else 0, n_val=len(val) if val else 0,
        targets_built=built, targets_cache=str(targets_cache_dir()),
        seconds=round(time.time() - t_prep, 1))
    return data, pre, val


def _restore(run: _Run, resume: bool, log: Callable) -> None:
    """Start from the checkpoint (``resume``) or the pretrained weights, if any."""
    import torch

    if resume:
        ckpt = torch.load(run.out / CHECKPOINT, map_location=run.device, weights_only=True)
        if ckpt.get("train_config") != _train_section(run.cfg):
            raise ValueError(f"--resume: the config's diam_mean/width/train section differs from the "
                             f"checkpoint's ({ckpt.get('train_config')}); resume with the same "
                             "config, or start a new --out")
        if ckpt.get("train_ids") != run.data.ids:
            raise ValueError("--resume: the training images differ from the checkpoint's "
                             "(same --data, --folds and --fold are needed)")
        run.net.load_state_dict(ckpt["net"])
        run.done, run.opt_state = int(ckpt["epoch"]), ckpt.get("optimizer")
        run.seconds_before = float(ckpt.get("train_seconds", 0.0))
        run.pretrained = Path(ckpt["pretrained"]) if ckpt.get("pretrained") else None
        log("cellpose_resume", from_epoch=run.done, of=run.total_epochs)
    elif run.pretrained is not None:
        _load_state_dict(run.net, run.pretrained, run.cfg.diam_mean)
        log("cellpose_pretrained", path=str(run.pretrained))


def _train_stages(run: _Run, options: FitOptions, log: Callable) -> float:
    """The epoch loop over the stages, from ``run.done``; returns the training seconds (this
    call's plus earlier calls')."""
    from tqdm import tqdm

    cfg, tcfg, group = run.cfg, run.cfg.train, run.group
    epoch_log = _EpochLog(run.out / EPOCH_LOG, keep_through=run.done) if group.main else None
    total = run.total_epochs
    t0 = time.time()
    clock = BudgetClock(options.time_budget_s, now=t0)
    ran = 0
    autocast = run.autocast
    log("cellpose_precision", amp_cpu=tcfg.amp_cpu, native_bf16=cpu_has_native_bf16(),
        autocast="bfloat16" if autocast else None)
    bar = tqdm(total=total, initial=run.done, desc="cellpose epochs", unit="ep",
               disable=not (options.progress and group.main))
    try:
        start = 0
        for stage, n_epochs, stage_data in run.stages:
            end = start + n_epochs
            if run.done >= end:
                start = end
                continue
            rates = learning_rates(n_epochs, tcfg.lr, tcfg.warmup_epochs)
            opt = _make_optimizer(run.net, tcfg)
            if run.opt_state is not None and run.done > start:
                opt.load_state_dict(run.opt_state)
            run.opt_state = None
            for g in range(run.done, end):
                t_ep = time.time()
                _seed_all(tcfg.seed, g)
                # With a time budget the end-of-run decay happens in the budget's last fifth.
                lr = float(rates[g - start]) * halving_tail(clock.fraction())
                loss, n_crops = _train_epoch(run.net, opt, stage_data, lr, cfg.diam_mean, tcfg,
                                             epoch=g, train_net=run.train_net, group=group,
                                             autocast=autocast)
                release_free_memory()  # the epoch's freed heap (kit.heap)
                if not math.isfinite(loss):
                    raise RuntimeError(f"training diverged: loss is {loss} at epoch {g + 1}; "
                                       "lower train.lr")
                vloss = ""
                if run.val is not None and len(run.val) and ((g + 1) % tcfg.eval_every == 0
                                                             or g + 1 == end):
                    if group.main:  # the monitoring loss: rank 0 alone, the others wait
                        vloss = round(_val_loss(run.net, run.val, cfg.diam_mean, tcfg), 6)
                    group.barrier()
                run.done, ran = g + 1, ran + 1
                elapsed = run.seconds_before + time.time() - t0
                if epoch_log is not None:
                    epoch_log.write(epoch=run.done, stage=stage, stage_epoch=g + 1 - start,
                                    lr=lr, train_loss=round(loss, 6),
                                    val_loss=vloss, seconds=round(time.time() - t_ep, 2),
                                    n_crops=n_crops)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                over_time = group.any(clock.spent())
                over_count = options.stop_after_epochs is not None and ran >= options.stop_after_epochs
                if group.main and (run.done % tcfg.save_every == 0 or run.done == end
                                   or over_time or over_count):
                    run.save_checkpoint(opt if run.done < end else None, elapsed)
                if (over_time or over_count) and run.done < total:
                    run.stopped = "time budget" if over_time else "epoch budget"
                    break
            if run.stopped:
                break
            start = end
    finally:
        bar.close()
    seconds = run.seconds_before + time.time() - t0
    log("cellpose_train", epochs_done=run.done, epochs_planned=total, stopped=run.stopped,
        seconds=round(seconds, 1))
    return seconds


def _write_model_folder(run: _Run, train_seconds: float, config_path, log: Callable) -> None:
    """The final network (BatchNorm statistics recomputed), its size model, ``model.json`` and
    the copy of the config."""
    import torch

    cfg, out, data = run.cfg, run.out, run.data
    n_bn = recalibrate_batchnorm(run.net, data, cfg.diam_mean, cfg.train)
    release_free_memory()  # before the SizeModel's passes (kit.heap)
    log("cellpose_batchnorm", crops=n_bn)
    run.net.diam_labels.data = torch.ones(1, device=run.net.device) * float(np.mean(data.diam))
    run.net.save_model(str(out / WEIGHTS))
    size_path = None
    if cfg.size_model.enabled:
        t_size = time.time()
        size_path = _fit_size_model(run.net, str(out / WEIGHTS), data, cfg.size_model,
                                    cfg.train.seed)
        log("cellpose_size_model", seconds=round(time.time() - t_size, 1))
    elif (out / SIZE_MODEL).exists():
        (out / SIZE_MODEL).unlink()
    total = run.total_epochs
    doc = {
        "type": CellposeSegmenter.TYPE,
        "config": cfg.to_dict(),
        "diameters": _median_diameters(data, cfg.diam_mean),
        "weights": WEIGHTS,
        "size_model": SIZE_MODEL if size_path else None,
        "training": {"epochs_done": run.done, "epochs_planned": total,
                     "complete": run.done >= total, "stopped": run.stopped,
                     "train_seconds": round(train_seconds, 1), "n_images": len(data),
                     "skipped_images": data.skipped,
                     "n_pretrain_images": len(run.pre) if run.pre else 0,
                     "pretrained": str(run.pretrained) if run.pretrained else None,
                     "diam_labels": float(np.mean(data.diam)), "device": str(run.device)},
        "versions": package_versions(("cellpose", "torch", "numpy")),
    }
    if config_path is not None:
        text = Path(config_path).read_text()
        if load_config(config_path) != cfg:
            text += ("\n# NOTE: the run changed values of this file (e.g. kit.train --epochs); "
                     "model.json 'config' holds the values used.\n")
    else:
        text = ("# written by kit.models.cellpose.fit from a config object\n"
                + json.dumps(cfg.to_dict(), indent=1) + "\n")
    with atomic_open(out / CONFIG_COPY) as f:
        f.write(text)
    _write_json(doc, out / "model.json")


def _fit_size_model(net, weights: str, data: _ImageSet, scfg: SizeModelConfig, seed: int = 0) -> Path:
    """The SizeModel of cellpose's ``train.train_size``, its images read per batch: for
    ``scfg.epochs`` passes over the training images in random order, batches of random
    ``scfg.bsize`` crops (``transforms.random_rotate_and_resize``, scale range 1 as cellpose)
    give style vectors (the network's second output) and targets ``log(diameter) -
    log(diam_mean) + log(crop scale)``; a ridge regression (L2 weight 1) maps styles to
    targets. Writes ``<weights>_size.npy`` in cellpose's format
    (``{"A", "smean", "diam_mean", "ymean"}``, read by :class:`CellposeSegmenter` and by
    cellpose's own ``SizeModel``). The caller's numpy random stream is left as it was."""
    diam_mean = float(net.diam_mean.item())
    np_state = np.random.get_state()
    try:
        x, y = _size_model_samples(net, data, scfg, diam_mean, np.random.default_rng(seed))
    finally:
        np.random.set_state(np_state)
    smean, ymean = x.mean(axis=0), float(y.mean())
    xc = (x - smean).T
    a = np.linalg.solve(xc @ xc.T + np.eye(xc.shape[0]), xc @ (y - ymean))
    params = {"A": a.astype(np.float32), "smean": smean.astype(np.float32),
              "diam_mean": diam_mean, "ymean": np.float32(ymean)}
    path = Path(weights + "_size.npy")
    with atomic_open(path, "wb") as f:
        np.save(f, params, allow_pickle=True)
    return path


def styles_of(net, x):
    """(B, 256) style vectors of a (B, 2, h, w) batch: ``net(x)[1]`` computed by CPnet's
    downsample path and ``make_style`` alone (the style does not depend on the upsample path,
    which the SizeModel then never runs: less time, a lower peak)."""
    mkldnn = getattr(net, "mkldnn", False)
    levels = net.downsample(x.to_mkldnn() if mkldnn else x)
    return net.make_style(levels[-1].to_dense() if mkldnn else levels[-1])


def _size_model_samples(net, data: _ImageSet, scfg: SizeModelConfig, diam_mean: float, rng):
    """``(styles (n, 256) float64, targets (n,) float64)`` of ``scfg.epochs`` passes of random
    crops over the image set, one batch of images in memory at a time."""
    import torch
    from cellpose import transforms

    net.eval()
    styles, targets = [], []
    for _ in range(scfg.epochs):
        order = rng.permutation(len(data))
        for inds, (xs, _) in data.batches(order[k:k + scfg.batch_size]
                                          for k in range(0, len(order), scfg.batch_size)):
            np.random.seed(int(rng.integers(2**31)))  # transforms draw from numpy's global stream
            imgi, _, scale = transforms.random_rotate_and_resize(xs, scale_range=1.0,
                                                                 xy=(scfg.bsize, scfg.bsize))
            with torch.no_grad():
                feat = styles_of(net, torch.from_numpy(imgi).to(net.device))
            styles.append(feat.cpu().numpy().astype(np.float64))
            diam = np.array([data.diam[i] for i in inds])
            targets.append(np.log(diam) - np.log(diam_mean) + np.log(scale))
    return np.concatenate(styles), np.concatenate(targets)
