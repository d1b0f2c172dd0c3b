"""Every model trained, tuned and scored on one held-out fold, honestly: ``python -m kit.report``.

``python -m kit.report --data DIR --folds CSV --held-out K --out DIR`` (e.g. ``--data
../shared/data/sartorius --folds ../shared/data/sartorius/folds.csv --held-out 3``):

1. **train** every model of ``--models`` with ``kit.train`` on the other folds
   (``--keep-validation``: the same inner validation split of the training folds is set aside
   for every model; Mask R-CNN chooses its epoch on it, nothing else sees it in training);
   ``--parallel 2`` trains two models side by side, one CPU thread each. Recipes:
   :data:`RECIPES` (``--config MODEL=YAML``, ``--budget MODEL=MINUTES`` change them);
2. **cache** each model's raw outputs on the validation split and on the held-out fold
   (:func:`kit.nested.ensure_cache`);
3. **tune** each model's post-processing per cell type on the validation cache only
   (:func:`kit.tuning.search`; for the classical baseline this is its fit); the tuned YAML is
   copied into the model folder;
4. **ensemble** the learned models (their tuned post-processing included) without and with
   TTA (``--tta``), cache, tune the fusion on the validation split the same way;
5. **score** every model on the held-out fold before and after tuning
   (:func:`kit.nested.score_cache`), with an error breakdown (:mod:`kit.error_analysis`);
6. **write** ``report.md`` and ``report.json`` (AP per threshold and MAP, overall and per cell
   type, training and inference seconds per image, what chose what), ``report_map.png`` (bar
   chart) and ``figures/``: TP/FP/FN outlines of the best and worst held-out image per cell
   type of the best row (:mod:`kit.report_files`).

The held-out fold chooses nothing: not a checkpoint, not a parameter, not an ensemble weight.
A rerun on the same ``--out`` reuses every finished stage (a trained model whose
``params.json`` matches the requested run, caches, tuned files); ``--fresh`` starts over.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kit.atomic import up_to_date
from kit.bundle_install import sha256

REPO_CONFIGS = Path(__file__).resolve().parent / "configs"
# model -> (config in kit/configs, training minutes): the CPU recipes for the real images
RECIPES = {"cellpose": ("cellpose_cpu_real.yaml", 40.0), "maskrcnn": ("maskrcnn_cpu_real.yaml", 47.0),
           "detectron2": ("detectron2_cpu_real.yaml", 40.0)}
DEFAULT_MODELS = ("baseline", "cellpose", "maskrcnn")


@dataclass
class Plan:
    """What one report run does (from the command line)."""
    data: Path
    folds: Path
    held_out: int
    out: Path
    models: tuple
    configs: dict          # model -> YAML path (or None: the family's default)
    budgets: dict          # model -> minutes (or None)
    members: tuple         # ensemble members (trained models)
    tta: tuple             # TTA views of the second ensemble (() = no TTA ensemble)
    val_fraction: float
    seed: int
    parallel: int
    n_jobs: int
    progress: bool
    livecell: tuple = ()   # (COCO json, images folder): the learned models' LIVECell stage


class Progress:
    """One line per stage on the screen: ``[report] stage ... result (time)``."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, text: str) -> None:
        minutes = (time.perf_counter() - self.t0) / 60
        print(f"[report {minutes:5.1f} min] {text}", flush=True)


# ---------------------------------------------------------------------------------------------
# Stage 1: training (kit.train in a subprocess per model)


def _sha(path) -> str | None:
    return sha256(Path(path)) if path else None


def train_command(plan: Plan, model: str) -> list[str]:
    """The ``kit.train`` command line of one model (``--fresh`` added when replacing a run)."""
    cmd = [sys.executable, "-m", "kit.train", model, "--data", str(plan.data), "--folds",
           str(plan.folds), "--fold", str(plan.held_out), "--out", str(plan.out / "models" / model),
           "--val-fraction", str(plan.val_fraction), "--seed", str(plan.seed), "--keep-validation",
           "--quiet"]
    if plan.configs.get(model):
        cmd += ["--config", str(plan.configs[model])]
    if plan.budgets.get(model) is not None:
        cmd += ["--time-budget", str(plan.budgets[model])]
    if plan.livecell and model != "baseline":
        cmd += ["--livecell", str(plan.livecell[0]), "--livecell-images", str(plan.livecell[1])]
    return cmd


def finished_run_matches(plan: Plan, model: str) -> bool:
    """True when ``OUT/models/MODEL`` holds a finished ``kit.train`` run (model, data, folds,
    held-out fold, validation split, config content and budget all as requested)."""
    folder = plan.out / "models" / model
    try:
        params = json.loads((folder / "params.json").read_text())
    except (OSError, ValueError):
        return False
    if not ((folder / "model.json").is_file() and (folder / "oof_score.json").is_file()):
        return False

    def same_path(a, b) -> bool:
        return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()

    want_cfg = plan.configs.get(model)
    livecell = plan.livecell if plan.livecell and model != "baseline" else (None, None)
    if not (same_path(params.get("livecell"), livecell[0]) or params.get("livecell") == livecell[0]):
        return False
    try:  # the content the run trained with (older runs: the file at its path now)
        trained_with = params.get("config_sha256") or _sha(params.get("config"))
        same_cfg = trained_with == _sha(want_cfg)
    except OSError:
        return False
    return (params.get("model") == model and same_path(params.get("data"), plan.data)
            and same_path(params.get("folds"), plan.folds) and params.get("fold") == plan.held_out
            and params.get("val_fraction") == plan.val_fraction and params.get("seed") == plan.seed
            and params.get("keep_validation") is True and params.get("epochs") is None
            and params.get("time_budget") == plan.budgets.get(model) and same_cfg)


def train_models(plan: Plan, say: Progress) -> dict[str, dict]:
    """Stage 1: ``{model: {"reused": bool, "seconds": wall, "threads": CPU threads or None}}``
    (threads from each run's ``params.json``); raises RuntimeError naming the log of a failed
    run."""
    logs = plan.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = [m for m in plan.models if not finished_run_matches(plan, m)]
    info = {m: {"reused": True, "seconds": _train_log_seconds(plan.out / "models" / m)}
            for m in plan.models if m not in todo}
    for m in info:
        say(f"train {m}: reused the finished run in {plan.out / 'models' / m}")
    from kit.distributed import parallel_env

    threads, env = parallel_env(min(plan.parallel, len(todo)))

    def run(model: str) -> tuple[str, float]:
        cmd = train_command(plan, model)
        folder = plan.out / "models" / model
        if (folder / "params.json").is_file():
            cmd.append("--fresh")   # an unfinished or different earlier run: start over
        say(f"train {model}: started ({threads} thread(s); log {logs / f'train_{model}.log'})")
        t0 = time.perf_counter()
        with open(logs / f"train_{model}.log", "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"kit.train {model} failed with exit code {done.returncode}; "
                               f"see {logs / f'train_{model}.log'}")
        score = json.loads((folder / "oof_score.json").read_text())["map"]
        say(f"train {model}: done in {seconds / 60:.1f} min (held-out MAP as trained {score:.3f})")
        return model, seconds

    with ThreadPoolExecutor(max_workers=max(1, plan.parallel)) as pool:
        for model, seconds in pool.map(run, todo):
            info[model] = {"reused": False, "seconds": seconds}
    for m, entry in info.items():   # as each kit.train run recorded them, reused or not
        entry["threads"] = _trained_threads(plan.out / "models" / m)
    return info


def _trained_threads(folder: Path) -> int | None:
    """CPU threads of a finished kit.train run (``params.json``; None for runs that predate it)."""
    try:
        return json.loads((folder / "params.json").read_text()).get("cpu_threads")
    except (OSError, ValueError):
        return None


def _train_log_seconds(folder: Path) -> float | None:
    """Wall seconds of a finished kit.train run: first to last event of its ``train.log``."""
    try:
        times = [json.loads(line)["time"] for line in (folder / "train.log").read_text().splitlines()
                 if line.strip()]
    except (OSError, ValueError, KeyError):
        return None
    return times[-1] - times[0] if len(times) >= 2 else None


# ---------------------------------------------------------------------------------------------
# Stages 2-5: caches, nested tuning, ensembles, held-out scores


def validation_ids(plan: Plan, models) -> list[str]:
    """The validation split every model set aside (their ``val.csv``, which must agree)."""
    from kit.csvfile import read_csv

    splits = {}
    for m in models:
        cols, rows = read_csv(plan.out / "models" / m / "val.csv", ("id",))
        splits[m] = [fields[cols["id"]] for _, fields in rows]
    first = next(iter(splits.values()))
    differ = [m for m, ids in splits.items() if ids != first]
    if differ:
        raise RuntimeError(f"the validation splits of {list(splits)} differ ({differ}): retrain "
                           "them with the same --seed and --val-fraction")
    if not first:
        raise RuntimeError("the models set no validation images aside: too few training images "
                           "for nested tuning (raise --val-fraction or add images)")
    return first


def tune_model(plan: Plan, name: str, folder: Path, val_records, say: Progress) -> dict:
    """Cache ``folder`` on the validation split, tune on that cache, write
    ``OUT/tuned/NAME.yaml`` (+ ``.md``, ``.json``) and copy it into the folder as ``tuned.yaml``.
    Reuses a tuned file newer than its cache. Returns the search summary."""
    from kit.nested import ensure_cache, tune_on_cache

    cache, built = ensure_cache(folder, val_records, plan.out / "cache" / name / "val",
                                progress=plan.progress)
    tuned = plan.out / "tuned" / f"{name}.yaml"
    summary_path = tuned.with_suffix(".json")
    if not built and up_to_date(summary_path, cache / "cache.json"):
        summary = json.loads(summary_path.read_text())
        say(f"tune {name}: reused {tuned}")
    else:
        t0 = time.perf_counter()
        say(f"tune {name}: searching on {len(val_records)} validation images")
        result = tune_on_cache(cache, plan.data / "train.csv", tuned, plan.n_jobs,
                               log=lambda message: say(f"tune {name}: {message}"))
        summary = {"images": len(val_records), "seconds": round(time.perf_counter() - t0, 1),
                   "types": {ct: {"n_images": len(r.ids), "before": r.before, "after": r.after,
                                  "defaults": r.defaults, "best": r.best}
                             for ct, r in result.types.items()}}
        from kit.atomic import atomic_open

        with atomic_open(summary_path) as f:
            json.dump(summary, f, indent=1, allow_nan=False)
        say(f"tune {name}: on {len(val_records)} validation images ({result.gains()})")
    installed = folder / "tuned.yaml"
    if not installed.is_file() or installed.read_bytes() != tuned.read_bytes():
        shutil.copyfile(tuned, installed)   # an unchanged copy keeps its time: ensembles stay
    return summary


def held_out_scores(plan: Plan, name: str, folder: Path, held_out, tuning: dict, say: Progress):
    """``(as trained, tuned)`` :class:`kit.nested.HeldOutScores` of one model on the held-out
    fold (its cache built or reused)."""
    from kit.nested import ensure_cache, score_cache

    cache, _ = ensure_cache(folder, held_out, plan.out / "cache" / name / "held_out",
                            progress=plan.progress)
    before = score_cache(cache, held_out, n_jobs=plan.n_jobs)
    best = {ct: t["best"] for ct, t in tuning["types"].items()}
    after = score_cache(cache, held_out, n_jobs=plan.n_jobs,
                        params_of=lambda ct: best.get(ct) or before.params[ct])
    say(f"score {name} on the {len(held_out)} held-out images: MAP {before.summary.map:.3f} as "
        f"trained, {after.summary.map:.3f} tuned on the validation split")
    return before, after


def make_ensembles(plan: Plan, say: Progress) -> dict[str, Path]:
    """The ensemble folders (members with their tuned post-processing): ``ensemble`` (no TTA)
    and ``ensemble_tta`` (``plan.tta``), written when missing or older than a member's tuned
    file."""
    from kit.models.registry import family
    from kit.report_files import ENSEMBLE, ENSEMBLE_TTA

    members = [(plan.out / "models" / m, 1.0) for m in plan.members]
    newest = max((p / "tuned.yaml").stat().st_mtime for p, _ in members)
    out = {}
    for name, views in ((ENSEMBLE, ("id",)), (ENSEMBLE_TTA, plan.tta)):
        if not views or (name == ENSEMBLE_TTA and tuple(views) == ("id",)):
            continue
        folder = plan.out / "models" / name
        mj = folder / "model.json"
        if not mj.is_file() or mj.stat().st_mtime < newest:
            if folder.exists():
                shutil.rmtree(folder)
            family("ensemble").make(folder, members, list(views))
            say(f"{name}: members {', '.join(plan.members)}, TTA {','.join(views)}")
        out[name] = folder
    return out


def _read_records(plan: Plan):
    """(held-out records, training-fold records by id)."""
    from kit.data import read_folds_csv, read_train_csv, split_by_fold

    records = read_train_csv(plan.data / "train.csv", check_images=True)
    try:
        train, held_out = split_by_fold(records, read_folds_csv(plan.folds), plan.held_out,
                                        plan.folds)
    except ValueError as err:
        raise ValueError(f"--held-out {plan.held_out}: {err}") from None
    return held_out, {r.id: r for r in train}


def run(plan: Plan, records=None) -> dict:
    """Every stage (module docstring); returns the report document (also written).
    ``records``: :func:`_read_records` of the plan when the caller already read them."""
    from kit.report_files import Row, write_report

    say = Progress()
    held_out, train_by_id = records or _read_records(plan)
    say(f"{len(held_out)} held-out images (fold {plan.held_out}), {len(train_by_id)} training "
        f"images; models {', '.join(plan.models)}")
    trained = train_models(plan, say)
    val_ids = validation_ids(plan, plan.models)
    val_records = [train_by_id[i] for i in val_ids]
    say(f"validation split (chooses epochs and post-processing): {len(val_records)} images")
    rows, tuning = [], {}

    def tune_and_score(name: str, folder: Path, train_seconds) -> None:
        tuning[name] = tune_model(plan, name, folder, val_records, say)
        before, after = held_out_scores(plan, name, folder, held_out, tuning[name], say)
        rows.append(Row(name, name, False, before, train_seconds, len(train_by_id)))
        rows.append(Row(f"{name} tuned", name, True, after, train_seconds, len(train_by_id)))

    for m in plan.models:
        tune_and_score(m, plan.out / "models" / m, trained[m]["seconds"])
    if plan.members:
        members_seconds = sum(trained[m]["seconds"] or 0.0 for m in plan.members)
        for name, folder in make_ensembles(plan, say).items():
            tune_and_score(name, folder, members_seconds)
    doc = write_report(plan, rows, tuning, trained, val_ids, held_out, say)
    say(f"done: {plan.out / 'report.md'}")
    return doc


# ---------------------------------------------------------------------------------------------
# Command line


def _pairs(items, what: str, convert) -> dict:
    out = {}
    for item in items:
        model, sep, value = item.partition("=")
        if not sep or not model or not value:
            raise ValueError(f"--{what} {item!r}: expected MODEL=VALUE")
        try:
            out[model] = convert(value)
        except ValueError:
            raise ValueError(f"--{what} {item!r}: bad value {value!r}") from None
    return out


def make_plan(args) -> Plan:
    """The :class:`Plan` of the command line, every input checked (nothing written yet)."""
    from kit.models.registry import family, names

    models = tuple(dict.fromkeys(args.models))
    trainable = names(trainable=True)
    bad = [m for m in models if m not in trainable]
    if bad:
        raise ValueError(f"--models: {bad} cannot be trained; choose from {trainable}")
    if not (args.data / "train.csv").is_file():
        raise FileNotFoundError(f"--data {args.data}: no train.csv there (a competition directory)")
    if not args.folds.is_file():
        raise FileNotFoundError(f"--folds {args.folds}: no such file")
    configs = {m: (REPO_CONFIGS / RECIPES[m][0]).resolve() for m in models if m in RECIPES}
    budgets = {m: RECIPES[m][1] for m in models if m in RECIPES}
    for m, path in _pairs(args.config, "config", Path).items():
        if m not in models:
            raise ValueError(f"--config {m}=...: {m} is not in --models {list(models)}")
        configs[m] = path.resolve()
    for m, minutes in _pairs(args.budget, "budget", float).items():
        if m not in models:
            raise ValueError(f"--budget {m}=...: {m} is not in --models {list(models)}")
        if not minutes > 0:
            raise ValueError(f"--budget {m}={minutes}: minutes must be > 0")
        budgets[m] = minutes
    for m, path in configs.items():
        family(m).load_config(path)   # a bad config fails here, before any training
    members = tuple(m for m in (args.members if args.members is not None else models)
                    if m != "baseline")
    bad = [m for m in members if m not in models]
    if bad:
        raise ValueError(f"--members {bad}: not in --models {list(models)}")
    views = family("ensemble").views
    tta = tuple(t.strip() for t in args.tta.split(",") if t.strip()) if args.tta != "none" else ()
    bad = [t for t in tta if t not in views]
    if bad:
        raise ValueError(f"--tta {args.tta}: unknown view(s) {bad}; choose from {list(views)}")
    if not 0 < args.val_fraction < 0.5:
        raise ValueError(f"--val-fraction must be in (0, 0.5), got {args.val_fraction}")
    livecell = ()
    if args.livecell is not None:
        images = args.livecell_images
        if images is None or not images.is_dir() or not args.livecell.is_file():
            raise FileNotFoundError(f"--livecell {args.livecell} needs a COCO json file and "
                                    f"--livecell-images, the folder of its images (got {images})")
        livecell = (args.livecell.resolve(), images.resolve())
    return Plan(args.data.resolve(), args.folds.resolve(), args.held_out, args.out.resolve(), models,
                configs, budgets, members, tta, args.val_fraction, args.seed, max(1, args.parallel),
                max(1, args.n_jobs), not args.quiet, livecell)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.report", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="Real data: --data ../shared/data/sartorius --folds "
                                            "../shared/data/sartorius/folds.csv --held-out 3; on "
                                            "Kaggle the competition directory with your folds.")
    parser.add_argument("--data", type=Path, required=True, help="competition directory (train.csv + train/)")
    parser.add_argument("--folds", type=Path, required=True, help="id,fold CSV")
    parser.add_argument("--held-out", type=int, required=True, help="the fold that is only scored")
    parser.add_argument("--out", type=Path, required=True, help="report folder (reused by a rerun)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models to train")
    parser.add_argument("--config", action="append", default=[], metavar="MODEL=YAML",
                        help="a model's config (default: the CPU recipes in kit/configs, RECIPES)")
    parser.add_argument("--budget", action="append", default=[], metavar="MODEL=MINUTES",
                        help="a model's training minutes (kit.train --time-budget)")
    parser.add_argument("--members", nargs="*", default=None,
                        help="ensemble members (default: every model but the baseline; none: no ensemble)")
    parser.add_argument("--tta", default="id,hflip", help="TTA views of ensemble_tta ('none': skip it)")
    parser.add_argument("--livecell", type=Path, default=None,
                        help="LIVECell COCO json: the learned models' pre-training stage (their "
                             "config's livecell_epochs)")
    parser.add_argument("--livecell-images", type=Path, default=None, help="folder of the --livecell images")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="inner validation split of the training folds (chooses everything)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the validation split")
    parser.add_argument("--parallel", type=int, default=2,
                        help="models trained side by side (CPU threads are shared out)")
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib workers of tuning and scoring")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (stage lines stay)")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    records = _read_records(plan)   # the held-out fold checked before anything is written
    if args.fresh and plan.out.exists():
        if not (plan.out / "models").is_dir() and any(plan.out.iterdir()):
            raise ValueError(f"--fresh: {plan.out} is not a report folder (no models/); not deleting it")
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        run(plan, records)
    except RuntimeError as e:
        from kit.errors import one_line

        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
