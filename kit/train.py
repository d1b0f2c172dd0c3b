"""Train a model on one fold and score it out of fold: ``python -m kit.train MODEL ...``.

``python -m kit.train MODEL --data DIR --fold K --out DIR [--folds folds.csv]``; MODEL is any
trainable family of :mod:`kit.models.registry` (baseline, cellpose, maskrcnn, ...).

Every model goes through the same steps, so their numbers compare:

1. read the competition directory (:mod:`kit.data`; train.csv + train/ is enough); folds from
   ``--folds`` or made by ``make_folds`` (grouped by sample, stratified by cell type; an image
   without a sample_id is a group of its own, with a warning) and written to ``folds.csv``;
   ``--set-aside K`` leaves fold K out of the run altogether (a final test kept for later);
2. for a family that uses validation images (:meth:`~kit.models.family.ModelFamily.wants_validation`,
   e.g. Mask R-CNN choosing its best epoch), set aside an inner validation split of the
   training folds (``--val-fraction``, grouped by sample: :func:`kit.data.inner_split`),
   written to ``val.csv``: it is what chooses a checkpoint; the held-out fold chooses nothing
   (``--keep-validation`` sets it aside for every family, e.g. for nested tuning);
3. fit the image -> cell-type classifier on the training folds (``celltype.joblib``) and
   report its accuracy on the held-out fold;
4. fit the model through its family (:meth:`kit.models.family.ModelFamily.fit`) and save it
   into ``--out`` (a model is one folder);
5. with ``--tune``, tune the model's post-processing per cell type on the validation split
   (:func:`tune_on_validation`: raw outputs cached in ``tune_cache/``, coordinate search of
   :mod:`kit.tuning`), written to ``tuned.yaml`` (+ ``tuned.md``), which the model folder then
   applies everywhere (OOF, ``kit.predict``, the bundle);
6. predict the held-out fold with the true cell types, write ``oof.csv`` (submission format)
   and score it with the competition metric (``oof_score.json``, which also records what chose
   what; table printed).

The run folder also gets ``params.json`` (the command's arguments, and the SHA-256 of
``--config``'s content as it trained) and ``train.log`` (one
JSON object per line, :class:`kit.runlog.RunLog`).

``torchrun --nproc_per_node N -m kit.train MODEL ...`` trains a family that can
(:attr:`~kit.models.family.ModelFamily.distributed`: Mask R-CNN, Cellpose) in N processes
(:mod:`kit.distributed`): every rank reads and checks the inputs, rank 0 alone does steps 1-3
and 5-6 and writes; the others join step 4 and end with it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kit import distributed
from kit.bundle_install import sha256
from kit.runlog import RunLog

# What marks a folder as holding an earlier kit.train run (params.json is written first).
RUN_MARKERS = ("params.json", "train.log", "model.json", "checkpoint.pt", "checkpoints")


def earlier_run(out: Path) -> list[str]:
    """The run markers present in ``out`` (empty: no earlier run there)."""
    return [m for m in RUN_MARKERS if (out / m).exists()] if out.is_dir() else []


def check_run_folder(out: Path, resume: bool, fresh: bool) -> None:
    """One rule for every model: a folder that holds an earlier run is continued only with
    ``--resume``, replaced only with ``--fresh``, and otherwise left alone with an error."""
    if resume and fresh:
        raise ValueError("--resume and --fresh contradict each other: continue the earlier run, "
                         "or start over")
    found = earlier_run(out)
    if found and not (resume or fresh):
        raise ValueError(f"{out} holds an earlier run ({', '.join(found)}): pass --resume to "
                         "continue it, or --fresh to delete it and start over")
    if fresh and found and not (out / "params.json").is_file():
        raise ValueError(f"{out} holds model files ({', '.join(found)}) but no params.json: not a "
                         "folder kit.train made, so --fresh will not delete it; choose another --out")


def check_inputs(args):
    """Everything a run reads besides the data, checked before anything is written: the
    config (read by the family), the files named by options, the run folder (its earlier run,
    its writability). Returns the family's config (:meth:`ModelFamily.load_config`)."""
    from kit.atomic import check_writable_dir
    from kit.models.registry import family

    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    config = family(args.model).load_config(args.config)
    if args.livecell is not None and args.livecell_images is None:
        raise ValueError("--livecell needs --livecell-images (the folder of its images)")
    for opt in ("pretrained", "livecell", "livecell_images", "folds"):
        path = getattr(args, opt)
        if path is not None and not path.exists():
            raise FileNotFoundError(f"--{opt.replace('_', '-')} {path}: no such file or folder")
    check_run_folder(args.out, args.resume, args.fresh)
    check_writable_dir(args.out, "run folder")
    return config


def _validation_role(family_selects: bool, has_val: bool, tune: bool = False) -> str:
    """What the validation split chooses inside kit.train (for ``oof_score.json``)."""
    if not has_val:
        return "nothing (no validation split)"
    tuned = "; the post-processing per cell type (tuned.yaml)" if tune else ""
    if family_selects:
        return "what the model family selects during training (e.g. the best epoch)" + tuned
    if tune:
        return "the post-processing per cell type (tuned.yaml)"
    return "nothing during training (kept aside, e.g. for nested post-processing tuning)"


def tune_on_validation(out: Path, val, gt_csv: Path, n_jobs: int = 1, progress: bool = True,
                       log=None):
    """Tune the post-processing of the model in ``out`` per cell type on the validation records
    ``val`` (their raw outputs cached in ``out/tune_cache``), write ``out/tuned.yaml`` and
    ``out/tuned.md``; return the :class:`kit.tuning.SearchResult` (types without validation
    images keep their settings). ``gt_csv``: the train.csv holding the validation ground truth."""
    from kit.nested import ensure_cache, tune_on_cache

    cache, _ = ensure_cache(out, val, out / "tune_cache", progress=progress)
    return tune_on_cache(cache, gt_csv, out / "tuned.yaml", n_jobs, log)


def fit_options(args):
    """The :class:`kit.models.family.FitOptions` of the command line (LIVECell records read)."""
    from kit.models.family import FitOptions

    livecell = ()
    if args.livecell is not None:
        from kit.data import read_coco
        from kit.heap import release_free_memory

        livecell = tuple(read_coco(args.livecell, args.livecell_images, source="livecell"))
        release_free_memory()  # the parse's text and compact annotations (kit.coco_json)
    return FitOptions(config=args.config, epochs=args.epochs, pretrained=args.pretrained,
                      resume=args.resume, livecell=livecell, progress=not args.quiet,
                      time_budget_s=None if args.time_budget is None else 60.0 * args.time_budget)


def split_fold(data: Path, fold: int, folds_csv: Path | None, n_folds: int, seed: int,
               set_aside: int | None = None):
    """(train records, held-out records, {id: fold} of every image the run uses) of ``fold``;
    reads only (the caller writes ``folds.csv`` once every input is known to be good).

    ``set_aside``: a fold whose images the run leaves out altogether (neither trained on,
    validated nor scored; absent from the returned folds), a final test kept for later."""
    from kit.celltype import check_trainable
    from kit.data import make_folds, read_competition_dir, read_folds_csv, split_by_fold

    records = read_competition_dir(data).train
    if folds_csv:
        folds = read_folds_csv(folds_csv)
    else:
        unknown = sum(r.sample_id is None for r in records)
        if unknown:
            print(f"warning: {unknown} of {len(records)} train images have no sample_id, so "
                  "folds cannot be grouped by sample: each such image is a group of its own "
                  "(images of one sample may straddle folds). Pass --folds CSV for real groups.",
                  file=sys.stderr)
        folds = make_folds(records, n_folds, seed, unknown_sample_alone=True)
    if set_aside is not None:
        if set_aside == fold:
            raise ValueError(f"--set-aside {set_aside}: it is the --fold this run holds out; set "
                             "aside another fold")
        try:
            records, _ = split_by_fold(records, folds, set_aside, folds_csv)
        except ValueError as err:
            raise ValueError(f"--set-aside {set_aside}: {err}") from None
    try:
        train, held_out = split_by_fold(records, folds, fold, folds_csv)
    except ValueError as err:
        raise ValueError(f"--fold {fold}: {err}") from None
    try:   # every model folder carries the image -> cell-type classifier: checked before any write
        check_trainable([r.cell_type for r in train])
    except ValueError as err:
        raise ValueError(f"{data / 'train.csv'}, field cell_type, --fold {fold}: {err}") from None
    return train, held_out, {r.id: folds[r.id] for r in records}


def memory_plan(fam, config, train, val, held_out, livecell):
    """The family's :class:`kit.models.memory_plan.MemoryPlan` of this run, with the held-out
    records (kept to score them) in its data."""
    import dataclasses

    from kit.models.memory_plan import records_mb

    plan = fam.memory_plan(config, train, val, livecell)
    return dataclasses.replace(plan, data_mb=plan.data_mb + records_mb(held_out))


def fit_cell_type_classifier(train, held_out, out: Path) -> float:
    """Fit on ``train`` images, save into ``out``; return the accuracy on ``held_out``
    (at least one image)."""
    import numpy as np

    from kit.celltype import CellTypeClassifier, image_features

    feats = np.stack([image_features(r.load_image()) for r in train])
    clf = CellTypeClassifier().fit_features(feats, [r.cell_type for r in train])
    clf.save(out)
    pred = clf.predict_features(np.stack([image_features(r.load_image()) for r in held_out]))
    return float(np.mean([p == r.cell_type for p, r in zip(pred, held_out)]))


def predict_and_score(model, held_out, out: Path, progress: bool = True,
                      selection: dict | None = None,
                      files: tuple[str, str] = ("oof.csv", "oof_score.json"),
                      desc: str = "OOF predict"):
    """Predict held-out images (a fold's OOF, a set-aside fold) with their true cell types,
    write ``out/files[0]`` (submission format, default oof.csv) and ``out/files[1]`` (the
    scores, default oof_score.json; with ``selection``: what chose what, recorded as given);
    return the :class:`kit.metric.Summary`."""
    from tqdm import tqdm

    from kit import cv, metric
    from kit.heap import release_free_memory
    from kit.submission import submission_writer

    release_free_memory()  # training's freed heap, before the first prediction
    scores = []  # per image: 10 match counts; its rows go to oof.csv as soon as it is predicted
    with submission_writer(out / files[0], [r.id for r in held_out]) as add:
        for rec in tqdm(held_out, desc=desc, unit="img", disable=not progress,
                        file=sys.stderr):
            labels = model.predict(rec.load_image(), rec.cell_type)
            release_free_memory()  # each image's holes in the heap go back (kit.heap)
            add(rec.id, labels)
            scores.append(metric.image_score(list(rec.rles), labels, rec.shape,
                                             id=rec.id, cell_type=rec.cell_type))
    summary = metric.summarize(scores)
    doc = cv.result_json(summary, scores, [])
    if selection is not None:
        doc["selection"] = selection
    cv.write_json_atomic(doc, out / files[1])
    return summary


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.train", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from kit.models import registry

    parser.add_argument("model", choices=registry.names(trainable=True),
                        help="which model family to train")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, help="competition directory")
    data.add_argument("--fold", type=int, default=0, help="held-out fold")
    data.add_argument("--folds", type=Path, default=None, help="id,fold CSV (default: make folds)")
    data.add_argument("--n-folds", type=int, default=5, help="folds to make when --folds is absent")
    data.add_argument("--seed", type=int, default=42, help="seed of the folds and the validation split")
    data.add_argument("--set-aside", type=int, default=None, metavar="FOLD",
                      help="a fold this run leaves out altogether (not trained on, validated or "
                           "scored): a final test for later, e.g. kit.train_folds --held-out")
    data.add_argument("--val-fraction", type=float, default=0.15,
                      help="inner validation split of the training folds (chooses the checkpoint; "
                           "0 = none: the last epoch is kept)")
    data.add_argument("--keep-validation", action="store_true",
                      help="set the validation split aside even for a family that selects nothing "
                           "during training (its images then stay free for nested post-processing "
                           "tuning, e.g. by kit.report)")
    data.add_argument("--tune", action="store_true",
                      help="after training, tune the post-processing per cell type on the "
                           "validation split (implies --keep-validation; tuned.yaml in --out, "
                           "applied to the out-of-fold predictions and everywhere after)")
    data.add_argument("--tune-jobs", type=int, default=1, help="joblib workers of --tune's search")
    data.add_argument("--livecell", type=Path, default=None,
                      help="LIVECell / COCO json to pre-train on first (trained models)")
    data.add_argument("--livecell-images", type=Path, default=None, help="folder of the --livecell images")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True, help="model/run folder to write")
    run.add_argument("--config", type=Path, default=None, help="model config YAML (trained models)")
    run.add_argument("--pretrained", type=Path, default=None,
                     help="initial weights file (trained models; never downloaded)")
    run.add_argument("--resume", action="store_true", help="continue from --out's last checkpoint")
    run.add_argument("--fresh", action="store_true",
                     help="delete the earlier run in --out (a folder kit.train made) and start over")
    run.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    run.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                     help="stop training after this many minutes, then save and score the model "
                          "(cellpose, maskrcnn; the checkpoint stays: --resume continues)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from kit.atomic import atomic_open
    from kit.data import inner_split, write_folds_csv
    from kit.errors import one_line
    from kit.models.family import _no_log
    from kit.models.registry import family

    # Everything is read and checked first: a bad input leaves nothing behind.
    config = check_inputs(args)
    train, held_out, folds = split_fold(args.data, args.fold, args.folds, args.n_folds, args.seed,
                                        args.set_aside)
    fam = family(args.model)
    wanted = fam.wants_validation(config) or args.keep_validation or args.tune
    fit_train, val = inner_split(train, args.val_fraction if wanted else 0.0, args.seed)
    if args.tune and not val:
        raise ValueError(f"--tune needs validation images: --val-fraction {args.val_fraction} of "
                         f"{len(train)} training images sets none aside")
    options = fit_options(args)
    group = distributed.start()
    if group.distributed and not fam.distributed:
        raise ValueError(f"the {args.model} model does not train in several processes: run "
                         "kit.train without torchrun (or with --nproc_per_node 1)")
    if not group.main:  # the other ranks train alongside rank 0, which writes everything
        group.barrier()  # rank 0 has prepared the run folder
        try:
            fam.fit(fit_train, val, args.out, options, _no_log)
        finally:
            distributed.finish()
        return 0
    plan = memory_plan(fam, config, fit_train, val, held_out, options.livecell)
    out = args.out
    if args.fresh and earlier_run(out):
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params["processes"] = group.world
    params["cpu_threads"] = distributed.cpu_threads()   # per process
    if args.config is not None:  # what the config file said when this run trained
        params["config_sha256"] = sha256(Path(args.config))
    with atomic_open(out / "params.json") as f:
        f.write(json.dumps(params, indent=1) + "\n")
    write_folds_csv(folds, out / "folds.csv")
    with atomic_open(out / "val.csv") as f:
        f.write("id\n" + "".join(f"{r.id}\n" for r in val))
    log = RunLog(out / "train.log")
    selection = {"held_out_fold": args.fold, "held_out_images": len(held_out),
                 "held_out_chooses": "nothing (scored only)",
                 "set_aside_fold": args.set_aside,
                 "validation_images": len(val), "validation_ids": "val.csv",
                 "validation_chooses": _validation_role(fam.wants_validation(config), bool(val),
                                                        args.tune)}
    cache_state = plan.cache_state()  # walks the cache folder: once
    print(plan.summary(cache_state), file=sys.stderr)
    try:
        log("split", n_train=len(fit_train), n_val=len(val), n_held_out=len(held_out))
        log("memory_plan", **plan.to_dict(), **cache_state)
        acc = fit_cell_type_classifier(train, held_out, out)
        log("celltype", held_out_accuracy=acc)
        group.barrier()  # the other ranks wait here for the run folder
        model = fam.fit(fit_train, val, out, options, log)
        distributed.finish()
        if args.tune:
            from kit.models import load_model

            result = tune_on_validation(out, val, args.data / "train.csv", args.tune_jobs,
                                        progress=not args.quiet)
            log("tuned", n_images=len(val),
                by_cell_type={ct: {"before": r.before, "after": r.after, "best": r.best}
                              for ct, r in result.types.items()})
            model = load_model(out)   # the folder's settings with tuned.yaml applied
        summary = predict_and_score(model, held_out, out, progress=not args.quiet,
                                    selection=selection)
    except (ValueError, OSError) as e:  # an input found bad while running
        log("error", message=one_line(e))
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the training itself failed (e.g. it diverged)
        log("failed", message=one_line(e))
        print(f"error: training failed: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        raise
    log("oof", map=summary.map, by_cell_type={k: v.map for k, v in summary.by_cell_type.items()})
    from kit.cv import format_table

    print(f"{args.model} fold {args.fold}: {len(fit_train)} train + {len(val)} validation / "
          f"{len(held_out)} held-out images; "
          f"cell-type classifier held-out accuracy {acc:.3f}")
    if args.tune:
        print(f"post-processing tuned on the {len(val)} validation images (tuned.yaml): "
              f"{result.gains()}")
    print(format_table(summary))
    print(f"model folder: {out}  (oof.csv, oof_score.json, folds.csv, train.log)")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
