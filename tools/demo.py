"""The main job on embedded demo data: ``python -m tools.demo --out demo_out``.

Runs the kit's command-line tools one after another, as a user would, on a synthetic
competition directory made by :mod:`kit.synth` (no download, no real data needed), or on a
competition directory you give (``--data DIR``, e.g. Kaggle's
``/kaggle/input/sartorius-cell-instance-segmentation`` or ``../shared/data/sartorius``):

1. ``kit.synth``      -> OUT/data (train.csv, train/, test/, sample_submission.csv, test_labels.csv)
2. ``kit.eda``        -> OUT/eda (report.md + figures of the training data)
3. ``kit.train``      -> OUT/models/{baseline,cellpose,maskrcnn}: fold 0 held out, short CPU training
                         (``--budget`` minutes each, CPU configs; the two learned models side by
                         side, one CPU thread each; with ``--tune`` every model's post-processing
                         tuned per cell type on an inner validation split), OOF predictions and
                         their score
4. ``kit.cv``         -> the out-of-fold table of every model (OUT/cv_<model>_oof.json)
5. ``build_bundle.py``-> OUT/bundle: kit wheel, vendored wheels, all model folders, MANIFEST.json
6. a Kaggle-like venv (only what a Kaggle image has) at OUT/kaggle-env, then with the network
   off (``unshare -n``): ``kernels/infer/infer.py`` installs the bundle and writes
   OUT/working/submission.csv with the shipped model, and validates it
7. ``kit.cv``         -> the submission scored against the test labels (when the data has them)
8. ``kit.viz``        -> OUT/figures: TP/FP/FN outlines of the shipped model on the image of
                         median score

The shipped model is the one of best out-of-fold MAP on fold 0; the submission is scored on
the test images, which chose nothing. Every step's output goes to OUT/demo.log; the screen
shows one line per step (and a status line a minute while models train) and, at the end, the
results table (also OUT/results.md and OUT/results.json) with the paths of the outputs. Each
step's exit status is checked; the first failure stops the demo with its code and the end of
the log.

Run again on the same ``--out``: the synthetic data and the Kaggle-like venv are reused, every
model is trained again from scratch (``kit.train --fresh``), and every later output is
replaced; ``--fresh`` here deletes ``--out`` first.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIGS = {"cellpose": "cellpose_cpu.yaml", "maskrcnn": "maskrcnn_cpu_demo.yaml"}
MODELS = ("baseline", "cellpose", "maskrcnn")
# --tune: the inner validation split of the training folds on which Mask R-CNN's epoch and
# every model's post-processing per cell type (kit.train --tune) are chosen. 0.2 of the 43
# training images of the default synthetic data is 9 images, one sample of each cell type
# (the default 0.15 holds no shsy5y sample).
TUNE_VAL_FRACTION = 0.2


class Steps:
    """Numbered demo steps: a line on the screen per step, their output in ``log``."""

    def __init__(self, log: Path):
        self.log = log
        self.n = 0
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")

    def module(self, title: str, *args: str) -> float:
        """``python -m <args>`` as a step (see :meth:`run`)."""
        return self.run(title, [sys.executable, "-m", *args], shown=f"python -m {' '.join(args)}")

    def run(self, title: str, cmd: list, env=None, shown: str | None = None) -> float:
        """Run one step, its output appended to the log; returns its seconds. A failure ends
        the demo with the step's exit code and the last lines of the log."""
        self.n += 1
        shown = shown or " ".join(map(str, cmd))
        print(f"[{self.n}] {title} ...", end="", flush=True)
        with open(self.log, "a") as f:
            f.write(f"\n=== [{self.n}] {title}\n$ {shown}\n")
            f.flush()
            start = time.perf_counter()
            done = subprocess.run(list(map(str, cmd)), env=env, stdout=f, stderr=subprocess.STDOUT)
            seconds = time.perf_counter() - start
            f.write(f"--- exit {done.returncode}, {seconds:.1f} s\n")
        if done.returncode != 0:
            print(f" FAILED (exit {done.returncode})", flush=True)
            self._fail(title, done.returncode)
        print(f" {_duration(seconds)}", flush=True)
        return seconds

    def side_by_side(self, jobs: list[tuple[str, list, Path]],
                     status_every: float = 60.0) -> list[float]:
        """Run ``jobs`` (title, ``python -m`` arguments, run folder) at the same time, the CPU
        cores shared out among them (:func:`kit.distributed.parallel_env`), each with its own log
        (``OUT/logs/step<N>.log``, appended to the demo log when it ends). The screen gets a line per start and end and, every
        ``status_every`` seconds, each run's latest epoch (:func:`training_status`). Returns
        the seconds of each job; the first failure stops the others and ends the demo as in
        :meth:`run`."""
        from kit.distributed import parallel_env

        logs = self.log.parent / "logs"
        logs.mkdir(exist_ok=True)
        threads, env = parallel_env(len(jobs))
        running = []
        for title, args, folder in jobs:
            self.n += 1
            path = logs / f"step{self.n}.log"
            shown = f"python -m {' '.join(map(str, args))}"
            with open(path, "w") as f:
                f.write(f"$ {shown}\n")
            print(f"[{self.n}] {title} ... started ({threads} thread(s))", flush=True)
            with open(path, "a") as f:
                proc = subprocess.Popen([sys.executable, "-m", *map(str, args)], env=env,
                                        stdout=f, stderr=subprocess.STDOUT)
            running.append({"n": self.n, "title": title, "proc": proc, "log": path,
                            "folder": folder, "start": time.perf_counter(), "seconds": None})
        last_status = time.perf_counter()
        while any(job["seconds"] is None for job in running):
            time.sleep(1.0)
            for job in running:
                if job["seconds"] is not None or job["proc"].poll() is None:
                    continue
                job["seconds"] = time.perf_counter() - job["start"]
                code = job["proc"].returncode
                self._append_job_log(job, code)
                if code != 0:
                    for other in running:
                        if other["proc"].poll() is None:
                            other["proc"].terminate()
                            other["proc"].wait()
                    print(f"[{job['n']}] {job['title']}: FAILED (exit {code})", flush=True)
                    self._fail(job["title"], code)
                print(f"[{job['n']}] {job['title']}: done in {_duration(job['seconds'])}", flush=True)
            if time.perf_counter() - last_status >= status_every:
                last_status = time.perf_counter()
                busy = [f"{job['folder'].name} {training_status(job['folder'])}"
                        for job in running if job["seconds"] is None]
                if busy:
                    print(f"    {_duration(last_status - running[0]['start'])}: " + "; ".join(busy),
                          flush=True)
        return [job["seconds"] for job in running]

    def _append_job_log(self, job: dict, code: int) -> None:
        text = job["log"].read_text()
        with open(self.log, "a") as f:
            f.write(f"\n=== [{job['n']}] {job['title']}\n{text}"
                    f"--- exit {code}, {job['seconds']:.1f} s\n")

    def _fail(self, title: str, code: int):
        """Print the end of the log and end the demo with ``code``."""
        tail = self.log.read_text().splitlines()[-15:]
        print("\n".join("    " + line for line in tail), file=sys.stderr)
        print(f"demo: step '{title}' failed with exit code {code}; "
              f"the whole output is in {self.log}", file=sys.stderr)
        raise SystemExit(code)


def training_status(folder: Path) -> str:
    """The latest epoch of a ``kit.train`` run in ``folder``, from its per-epoch/per-iteration
    CSV (Cellpose ``epochs.csv``, Mask R-CNN ``train_iter.csv``) and, when there is one, its
    latest validation MAP (``eval.csv``): e.g. ``"epoch 12, loss 0.53, val MAP 0.29"``; a
    specialist stage's (Mask R-CNN ``train.specialize``) is named: ``"val MAP 0.04 (astro
    specialist)"``. The files are being written: a missing file or a half-written last line only
    leaves a part out."""
    def last_number(name: str, key: str) -> tuple[str, float, str] | None:
        """(epoch, value of ``key``, stage or "") of the last complete row of ``name``."""
        try:
            with open(folder / name, newline="") as f:
                rows = list(csv.DictReader(f))
            return rows[-1]["epoch"], float(rows[-1][key]), rows[-1].get("stage") or ""
        except (OSError, IndexError, KeyError, TypeError, ValueError):
            return None

    parts = []
    for name, loss_key in (("epochs.csv", "train_loss"), ("train_iter.csv", "loss")):
        latest = last_number(name, loss_key)
        if latest is not None:
            parts.append(f"epoch {latest[0]}, loss {latest[1]:.2f}")
            break
    evaluated = last_number("eval.csv", "map")
    if evaluated is not None:
        stage = evaluated[2]
        whose = f" ({stage.partition(':')[2]} specialist)" if stage.startswith("specialist:") else ""
        parts.append(f"val MAP {evaluated[1]:.2f}{whose}")
    return ", ".join(parts) or "starting"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _median_image(cv_json: Path) -> str:
    """The id of the image of median score in a ``kit.cv --json`` file (a typical one)."""
    per_image = sorted(json.loads(cv_json.read_text())["per_image"], key=lambda r: (r["score"], r["id"]))
    return per_image[len(per_image) // 2]["id"]


def _scores(path: Path) -> dict:
    """map, AP@0.5 and per-type MAP of a ``kit.cv --json`` file."""
    doc = json.loads(path.read_text())
    return {"map": doc["map"], "ap50": doc["ap"][0], "n_images": doc["n_images"],
            "by_cell_type": {ct: v["map"] for ct, v in doc["by_cell_type"].items()}}


def results_table(rows: dict, cell_types: list[str]) -> str:
    """Markdown: one row per model (OOF MAP, per cell type, AP@0.5, kit.train minutes)."""
    head = ["model", "OOF MAP", *cell_types, "AP@0.5", "kit.train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, r in rows.items():
        cts = [f"{r['by_cell_type'][ct]:.3f}" if ct in r["by_cell_type"] else "-" for ct in cell_types]
        lines.append(f"| {model} | {r['map']:.3f} | " + " | ".join(cts)
                     + f" | {r['ap50']:.3f} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def _main(argv=None, prog: str = "python -m tools.demo") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                     epilog="Real data: --data DIR runs the same path on a competition "
                                            "directory (train.csv + train/ [+ test/]); e.g. on Kaggle "
                                            "--data /kaggle/input/sartorius-cell-instance-segmentation, "
                                            "here --data ../shared/data/sartorius. Longer --budget "
                                            "trains longer; the Kaggle GPU recipes are the default configs.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for every artefact")
    parser.add_argument("--data", type=Path, default=None,
                        help="a competition directory to use instead of synthetic data")
    parser.add_argument("--n-train", type=int, default=60, help="synthetic train images")
    parser.add_argument("--n-test", type=int, default=6, help="synthetic test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--budget", type=float, default=12.5,
                        help="training minutes per learned model (they train side by side); "
                             "12.5 keeps make demo under 20 minutes on a 2-core CPU")
    parser.add_argument("--tune", action="store_true",
                        help="tune every model's post-processing per cell type on a validation "
                             f"split ({TUNE_VAL_FRACTION * 100:.0f}%% of the training folds, kit.train "
                             "--tune), which the models then do not train on")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                        help="models to train and bundle")
    parser.add_argument("--no-offline", action="store_true",
                        help="stop after the bundle (no Kaggle-like env, no offline kernel run)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    if args.data is not None and not (args.data / "train.csv").is_file():
        raise FileNotFoundError(f"--data {args.data}: no train.csv there (a competition directory)")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    steps = Steps(out / "demo.log")
    print(f"demo: every step's output goes to {steps.log}")
    t_start = time.perf_counter()
    data = args.data.resolve() if args.data is not None else out / "data"
    if args.data is None and not (data / "train.csv").is_file():
        steps.module("synthetic competition data", "kit.synth", str(data), "--n-train",
                     str(args.n_train), "--n-test", str(args.n_test), "--seed", str(args.seed),
                     "--no-progress")
    steps.module("EDA report of the training data", "kit.eda", str(data), "--out", str(out / "eda"),
                 "--quiet")
    rows, minutes = {}, {}

    def train_args(model: str) -> list[str]:
        extra = [] if model == "baseline" else [
            "--config", str(REPO / "kit" / "configs" / CPU_CONFIGS[model]), "--time-budget", str(args.budget)]
        tune = ["--val-fraction", str(TUNE_VAL_FRACTION), "--tune"] if args.tune else []
        return ["kit.train", model, "--data", str(data), "--fold", "0", "--n-folds", "4", *tune,
                "--out", str(out / "models" / model), *extra, "--fresh", "--quiet"]

    def title(model: str) -> str:
        return f"train {model} (fold 0 held out), score out of fold"

    learned = [m for m in args.models if m != "baseline"]
    if "baseline" in args.models:
        minutes["baseline"] = steps.module(title("baseline"), *train_args("baseline")) / 60
    if learned:
        seconds = steps.side_by_side([(title(m), train_args(m), out / "models" / m) for m in learned])
        minutes.update({m: s / 60 for m, s in zip(learned, seconds)})
    for model in args.models:
        folder = out / "models" / model
        cv_json = out / f"cv_{model}_oof.json"
        steps.module(f"kit.cv on {model}'s out-of-fold predictions", "kit.cv", "--gt",
                     str(data / "train.csv"), "--pred", str(folder / "oof.csv"), "--folds",
                     str(folder / "folds.csv"), "--fold", "0", "--json", str(cv_json), "--quiet")
        rows[model] = {**_scores(cv_json), "minutes": minutes[model]}
    shipped = max(rows, key=lambda m: rows[m]["map"])
    bundle_dir = out / "bundle"
    steps.run("build the bundle", [sys.executable, REPO / "build_bundle.py", "--weights",
                                   *[out / "models" / m for m in args.models], "--out", bundle_dir])
    outputs = [("demo log", steps.log), ("data", data), ("EDA report", out / "eda" / "report.md"),
               ("model folders", out / "models"), ("bundle", bundle_dir)]
    submission = test_scores = None
    figures = out / "figures"
    if not args.no_offline and (data / "test").is_dir():
        from tools.bundle import make_kaggle_like_env, offline_command

        print("[*] Kaggle-like environment (first time: a few minutes) ...", end="", flush=True)
        t0 = time.perf_counter()
        python = make_kaggle_like_env(out / "kaggle-env")
        print(f" {_duration(time.perf_counter() - t0)}", flush=True)
        prefix, env, how = offline_command()
        work = out / "working"
        steps.run(f"inference kernel, network off ({how}), model {shipped}",
                  [*prefix, python, REPO / "kernels" / "infer" / "infer.py", "--bundle", bundle_dir,
                   "--data", data, "--out", work, "--model", shipped], env=env)
        submission = work / "submission.csv"
        outputs.append(("submission", submission))
        if (data / "test_labels.csv").is_file():
            steps.module("score submission.csv against the test labels", "kit.cv", "--gt",
                         str(data / "test_labels.csv"), "--pred", str(submission), "--json",
                         str(out / "cv_submission.json"), "--quiet")
            test_scores = _scores(out / "cv_submission.json")
    if submission is not None and test_scores is not None:
        first = _median_image(out / "cv_submission.json")
        steps.module(f"figure: {shipped} on test image {first}", "kit.viz", "--gt",
                     str(data / "test_labels.csv"), "--pred", str(submission), "--images",
                     str(data / "test"), "--ids", first, "--out", str(figures), "--quiet")
    else:
        first = _median_image(out / f"cv_{shipped}_oof.json")
        steps.module(f"figure: {shipped} on held-out image {first}", "kit.viz", "--gt",
                     str(data / "train.csv"), "--pred", str(out / "models" / shipped / "oof.csv"),
                     "--ids", first, "--out", str(figures), "--quiet")
    outputs.append(("figure (TP green, FP red, FN blue)", figures / f"{first}.png"))
    _report(out, rows, shipped, test_scores, outputs, time.perf_counter() - t_start)
    return 0


def _report(out: Path, rows: dict, shipped: str, test_scores: dict | None, outputs: list,
            seconds: float) -> None:
    """The last screen: the table, the shipped model and its test score, the outputs; also
    OUT/results.md and OUT/results.json."""
    from kit import CELL_TYPES
    from kit.atomic import atomic_open

    cell_types = [ct for ct in CELL_TYPES if any(ct in r["by_cell_type"] for r in rows.values())]
    n_held_out = next(iter(rows.values()))["n_images"]
    tuned = all((out / "models" / m / "tuned.yaml").is_file() for m in rows)
    lines = [f"Out of fold (fold 0 held out, {n_held_out} images"
             + ("; every model's post-processing tuned per cell type on a validation split of "
                "the training folds):" if tuned else "):"), "",
             results_table(rows, cell_types), "",
             f"shipped model: {shipped} (best OOF MAP; the test images chose nothing)"]
    if test_scores is not None:
        per_type = ", ".join(f"{ct} {v:.3f}" for ct, v in test_scores["by_cell_type"].items())
        lines.append(f"submission.csv on the {test_scores['n_images']} test images: MAP "
                     f"{test_scores['map']:.3f} ({per_type}), AP@0.5 {test_scores['ap50']:.3f}")
    lines += ["", "Outputs:"] + [f"  {label:<36} {path}" for label, path in outputs]
    lines.append(f"\ndemo: done in {_duration(seconds)}")
    text = "\n".join(lines)
    print("\n" + "=" * 78 + "\n" + text)
    with atomic_open(out / "results.md") as f:
        f.write(text + "\n")
    with atomic_open(out / "results.json") as f:
        json.dump({"models": rows, "shipped": shipped, "test": test_scores,
                   "outputs": {label: str(path) for label, path in outputs},
                   "seconds": round(seconds, 1)}, f, indent=1, allow_nan=False)


def main(argv=None, prog: str = "python -m tools.demo") -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(lambda args: _main(args, prog), argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
