"""Train every fold, score the whole train set out of fold, make the fold ensemble:
``python -m kit.train_folds MODEL --data DIR --out DIR [--folds CSV | --n-folds 5] [kit.train options]``.

1. The folds: ``--folds`` (id,fold CSV) or :func:`kit.data.make_folds` (``--n-folds``, grouped by
   sample, stratified by cell type), written to ``OUT/folds.csv``; every fold run reads that file.
2. ``kit.train MODEL --fold K --out OUT/fold<K>`` for each fold, one after another or
   ``--parallel N`` side by side (on CUDA one GPU each, ``CUDA_VISIBLE_DEVICES``; on CPU the
   cores shared out). Options this command does not know (``--config``, ``--time-budget``,
   ``--epochs``, ``--livecell ...``) go to every ``kit.train``. Each fold's model chose its
   checkpoint on an inner split of its own training folds; its held-out fold chose nothing.
   After each fold: its minutes, training steps and median seconds per step, and the time the
   folds left should take at that pace. A fold whose run finished (``oof_score.json``) with
   the same command is reused by a rerun.
3. ``OUT/oof.csv``: every train image predicted by the fold model that never saw it;
   ``OUT/oof_score.json`` and the printed table score it with the competition metric (the same
   numbers as ``python -m kit.cv --gt DATA --pred OUT/oof.csv``), beside each fold's MAP.
4. ``OUT/ensemble``: an ensemble model folder of the fold models (equal weights, ``--tta``
   views), what ``kit.predict`` and ``build_bundle.py --weights`` take as the submission model.
   It has no honest out-of-fold score (every image trained all but one of its members).

5. ``--held-out K``: fold K is set aside before anything else (``kit.train --set-aside K``): no
   fold model trains, validates or is scored on it, steps 1-4 run on the other folds. At the
   end the fold ensemble and each fold model predict it (true cell types, as out of fold) and
   are scored: ``OUT/held_out/<model>/predicted.csv`` + ``score.json``, the comparison in
   ``OUT/held_out.json``, ``held_out.md`` and ``held_out.png``. It is the fold ensemble's
   honest score, beside the single fold models it is made of. A rerun reuses the scores of
   models that did not change.

``OUT/train_folds.json`` records the command, the per-fold and overall scores and minutes.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kit.atomic import up_to_date
from kit.distributed import parallel_env

SUMMARY = "train_folds.json"
# kit.train options this command sets itself
OWN_OPTIONS = ("--fold", "--folds", "--out", "--n-folds", "--data", "--resume", "--set-aside")
HELD_OUT = "held_out"   # OUT/held_out/<model>/, OUT/held_out.json|.md|.png


def fold_dir(out: Path, fold: int) -> Path:
    return out / f"fold{fold}"


def step_stats(run: Path) -> tuple[int, float | None, str]:
    """``(count, median seconds, unit)`` of a finished fold run's training: its iterations
    (``train_iter.csv``: the detection families) or its epochs (``epochs.csv``: Cellpose);
    ``(0, None, "")`` when it logs neither (the classical baseline)."""
    for name, unit in (("train_iter.csv", "step"), ("epochs.csv", "epoch")):
        path = run / name
        if path.is_file():
            with open(path, newline="") as f:
                secs = [float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds")]
            return len(secs), (statistics.median(secs) if secs else None), unit
    return 0, None, ""


def _run_fold(args, extra: list[str], fold: int, slot: int, n_slots: int, say) -> dict:
    """One ``kit.train`` subprocess; its output goes to ``OUT/logs/fold<K>.log``."""
    out = fold_dir(args.out, fold)
    cmd = [sys.executable, "-m", "kit.train", args.model, "--data", str(args.data), "--folds",
           str(args.out / "folds.csv"), "--fold", str(fold), "--out", str(out), *extra]
    if args.held_out is not None:
        cmd += ["--set-aside", str(args.held_out)]
    if (out / "params.json").is_file():
        cmd.append("--fresh")   # an unfinished or different earlier run: start over
    env = dict(os.environ)
    gpus = _cuda_devices()
    if gpus and n_slots > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    elif n_slots > 1:
        env = parallel_env(n_slots)[1]
    log = args.out / "logs" / f"fold{fold}.log"
    say(f"fold {fold}: training (log {log})")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    minutes = (time.perf_counter() - t0) / 60
    if done.returncode != 0:
        raise RuntimeError(f"kit.train {args.model} --fold {fold} failed with exit code "
                           f"{done.returncode}; see {log}")
    return {"minutes": round(minutes, 2), "reused": False}


def _cuda_devices() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []


def _finished(out: Path, fold: int) -> bool:
    return (fold_dir(out, fold) / "oof_score.json").is_file() and (fold_dir(out, fold) / "model.json").is_file()


def merge_oof(out: Path, folds: list[int], train_ids: list[str]) -> Path:
    """``OUT/oof.csv``: the fold runs' ``oof.csv`` rows, in train.csv's image order (written to
    a temp file and renamed). A ValueError when an image is missing or predicted twice."""
    from kit.atomic import atomic_open

    rows: dict[str, list[list[str]]] = {}
    header = None
    for k in folds:
        with open(fold_dir(out, k) / "oof.csv", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            seen = set()
            for row in reader:
                if row[0] in rows and row[0] not in seen:
                    raise ValueError(f"image {row[0]} is out of fold in two fold runs")
                seen.add(row[0])
                rows.setdefault(row[0], []).append(row)
    missing = [i for i in train_ids if i not in rows]
    if missing:
        raise ValueError(f"{len(missing)} train image(s) have no out-of-fold prediction: {missing[:5]}")
    with atomic_open(out / "oof.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in train_ids:
            writer.writerows(rows[i])
    return out / "oof.csv"


def _main(argv=None) -> int:
    from kit.models import registry

    parser = argparse.ArgumentParser(prog="python -m kit.train_folds", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     allow_abbrev=False,  # --fold is kit.train's, not --folds
                                     epilog="Other options (--config, --time-budget, --epochs, --livecell, "
                                            "...) go to every kit.train run.")
    parser.add_argument("model", choices=registry.names(trainable=True), help="model family")
    parser.add_argument("--data", type=Path, required=True, help="competition directory")
    parser.add_argument("--out", type=Path, required=True, help="folder of the fold runs")
    parser.add_argument("--folds", type=Path, default=None, help="id,fold CSV (default: make folds)")
    parser.add_argument("--n-folds", type=int, default=5, help="folds to make when --folds is absent")
    parser.add_argument("--seed", type=int, default=42, help="seed of the folds")
    parser.add_argument("--parallel", type=int, default=1,
                        help="folds trained side by side (one GPU each on CUDA)")
    parser.add_argument("--tta", default="id", help="TTA views of the fold ensemble (e.g. id,hflip)")
    parser.add_argument("--held-out", type=int, default=None, metavar="FOLD",
                        help="a fold no fold model sees; the fold ensemble and each fold model "
                             "are scored on it at the end (OUT/held_out.md)")
    parser.add_argument("--fresh", action="store_true", help="delete --out's earlier runs first")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args, extra = parser.parse_known_args(argv)
    own = [a for a in extra if a.split("=")[0] in OWN_OPTIONS]
    if own:
        raise ValueError(f"{own[0]}: kit.train_folds sets it for every fold run; leave it out")
    if args.parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {args.parallel}")
    extra = [*extra, "--quiet"] if "--quiet" not in extra else extra
    try:
        return run(args, extra)
    except RuntimeError as e:  # a fold's training failed: its log says why
        from kit.errors import one_line

        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1


def run(args, extra: list[str]) -> int:
    import shutil

    from kit import cv, metric
    from kit.data import make_folds, read_competition_dir, read_folds_csv, split_by_fold, write_folds_csv
    from kit.models.registry import family

    t0 = time.perf_counter()

    def say(text: str) -> None:
        print(f"[folds {(time.perf_counter() - t0) / 60:5.1f} min] {text}", flush=True)

    train = read_competition_dir(args.data, check_images=False).train
    if args.folds is not None:
        folds = read_folds_csv(args.folds)
        unknown = sorted({r.id for r in train} - set(folds))
        if unknown:
            raise ValueError(f"--folds {args.folds}: no fold for {len(unknown)} train image(s), "
                             f"e.g. {unknown[:3]}")
    else:
        unknown = sum(r.sample_id is None for r in train)
        if unknown:
            print(f"warning: {unknown} of {len(train)} train images have no sample_id: each is a "
                  "group of its own (pass --folds CSV for real groups)", file=sys.stderr)
        folds = make_folds(train, args.n_folds, args.seed, unknown_sample_alone=True)
    test = []
    if args.held_out is not None:   # the split and its errors are kit.train --set-aside's
        try:
            train, test = split_by_fold(train, folds, args.held_out, args.folds)
        except ValueError as err:
            raise ValueError(f"--held-out {args.held_out}: {err}") from None
    fold_ids = sorted({folds[r.id] for r in train})
    if test and len(fold_ids) < 2:
        raise ValueError(f"--held-out needs 3 folds or more (two to train fold models on), "
                         f"got {len(fold_ids) + 1}")
    command = {"model": args.model, "extra": extra, "folds": {r.id: folds[r.id] for r in train},
               "held_out": None if args.held_out is None else {r.id: args.held_out for r in test}}
    summary_path = args.out / SUMMARY
    if args.fresh and args.out.exists():
        if not summary_path.is_file() and any(args.out.iterdir()):
            raise ValueError(f"--fresh: {args.out} holds no {SUMMARY}: not a kit.train_folds folder; "
                             "not deleting it")
        shutil.rmtree(args.out)
    if summary_path.is_file():
        before = json.loads(summary_path.read_text()).get("command")
        if before != command:
            raise ValueError(f"{args.out} holds fold runs of another command or other folds: pass "
                             "--fresh to start over, or another --out")
    elif args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"{args.out} is not empty and holds no {SUMMARY}: choose another --out")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    write_folds_csv(folds, args.out / "folds.csv")
    state = {"command": command, "folds": {}}
    cv.write_json_atomic(state, summary_path)
    say(f"{args.model}: {len(train)} train images in {len(fold_ids)} folds -> {args.out}")

    todo = [k for k in fold_ids if not _finished(args.out, k)]
    for k in fold_ids:
        if k not in todo:
            say(f"fold {k}: reused the finished run in {fold_dir(args.out, k)}")
            state["folds"][str(k)] = {"reused": True}
    n_slots = min(args.parallel, max(len(todo), 1))

    def one(job: tuple[int, int]) -> tuple[int, dict]:
        slot, k = job
        return k, _run_fold(args, extra, k, slot, n_slots, say)

    with ThreadPoolExecutor(max_workers=n_slots) as pool:
        for done, (k, info) in enumerate(pool.map(one, [(i % n_slots, k) for i, k in enumerate(todo)]), 1):
            count, per, unit = step_stats(fold_dir(args.out, k))
            info.update({f"{unit or 'step'}s": count, f"seconds_per_{unit or 'step'}": per})
            state["folds"][str(k)] = info
            minutes = [f["minutes"] for f in state["folds"].values() if "minutes" in f]
            # the folds left run n_slots at a time: a last fold alone takes a whole fold's time
            left = math.ceil((len(todo) - done) / n_slots) * statistics.mean(minutes)
            pace = f", {count} {unit}s at a median {per:.2f} s" if per else ""
            say(f"fold {k}: done in {info['minutes']:.1f} min{pace}; "
                f"{len(todo) - done} fold(s) left, about {left:.0f} min at this pace")
            cv.write_json_atomic(state, summary_path)

    merge_oof(args.out, fold_ids, [r.id for r in train])
    preds = cv.load_predictions(args.out / "oof.csv")
    scores, missing = cv.score_predictions(train, preds, progress=not args.quiet)
    overall = metric.summarize(scores)
    cv.write_json_atomic(cv.result_json(overall, scores, missing), args.out / "oof_score.json")
    for k in fold_ids:
        oof = json.loads((fold_dir(args.out, k) / "oof_score.json").read_text())
        state["folds"].setdefault(str(k), {})["map"] = oof["map"]
    state["oof_map"] = overall.map
    members = [(str(fold_dir(args.out, k)), 1.0) for k in fold_ids]
    tta = [t.strip() for t in args.tta.split(",") if t.strip()]
    made = args.out / "ensemble" / "model.json"
    if todo or not made.is_file() or json.loads(made.read_text())["config"]["tta"] != tta:
        family("ensemble").make(args.out / "ensemble", members, tta)
    else:   # the same fold models and views: kept, so that its held-out scores stay valid
        say(f"fold ensemble: reused {made.parent}")
    state["ensemble"] = {"folder": "ensemble", "members": [f"fold{k}" for k in fold_ids], "tta": tta}
    cv.write_json_atomic(state, summary_path)
    print(cv.format_table(overall))
    print("per fold (each on its own held-out fold): "
          + ", ".join(f"fold {k} {state['folds'][str(k)]['map']:.4f}" for k in fold_ids))
    print(f"out of fold over all {len(train)} train images: MAP {overall.map:.4f}  ({args.out / 'oof.csv'})")
    print(f"fold ensemble (the submission model): {args.out / 'ensemble'}")
    if test:
        state["held_out"] = score_held_out(args.out, args.held_out, test, fold_ids, say,
                                           progress=not args.quiet)
        cv.write_json_atomic(state, summary_path)
    return 0


def score_held_out(out: Path, fold: int, records, fold_ids, say, progress: bool = True) -> dict:
    """Score the fold ensemble and every fold model on the set-aside fold ``fold`` (true cell
    types; ``OUT/held_out/<model>/``), write ``OUT/held_out.json|.md|.png`` and print the table;
    return the comparison. A model's earlier scores are reused when newer than its folder."""
    from kit.cv import write_json_atomic
    from kit.fold_compare import compare, write_comparison
    from kit.models import load_model
    from kit.train import predict_and_score

    models = [("fold ensemble", out / "ensemble")] + [(f"fold {k} model", fold_dir(out, k)) for k in fold_ids]
    docs = {}
    for name, folder in models:
        target = out / HELD_OUT / folder.name
        score = target / "score.json"
        if up_to_date(score, folder / "model.json"):
            say(f"held-out fold {fold}: reused the scores of {name} ({score})")
            doc = json.loads(score.read_text())
        else:
            say(f"held-out fold {fold}: {name} predicts its {len(records)} images")
            target.mkdir(parents=True, exist_ok=True)
            model = load_model(folder)
            t0 = time.perf_counter()
            predict_and_score(model, records, target, progress=progress, desc=name,
                              selection={"held_out_fold": fold,
                                         "held_out_chooses": "nothing (scored only)"},
                              files=("predicted.csv", "score.json"))
            doc = json.loads(score.read_text())
            doc["seconds_per_image"] = (time.perf_counter() - t0) / len(records)
            write_json_atomic(doc, score)
        docs[name] = doc
    result = compare(docs, ensemble="fold ensemble", fold=fold)
    table = write_comparison(result, out / f"{HELD_OUT}.json")
    print(table)
    say(f"held-out fold {fold}: {out / HELD_OUT}.md, .json, .png")
    return result


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
