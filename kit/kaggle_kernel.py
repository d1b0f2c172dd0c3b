"""What the Kaggle kernels in ``kernels/`` run once the kit is installed from the bundle.

Paths default to Kaggle's and are overridable by flags or environment variables, so the same
kernel script runs locally (the offline end-to-end test does exactly that):

=============  ==============================================  ===================
flag           default                                         environment
=============  ==============================================  ===================
``--bundle``   ``/kaggle/input/sartorius-kit-bundle``          ``KIT_BUNDLE``
``--data``     ``/kaggle/input/sartorius-cell-instance-segmentation``  ``KIT_DATA``
``--out``      ``/kaggle/working``                             ``KIT_OUTPUT``
=============  ==============================================  ===================
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

KAGGLE_BUNDLE = "/kaggle/input/sartorius-kit-bundle"
KAGGLE_DATA = "/kaggle/input/sartorius-cell-instance-segmentation"
KAGGLE_OUTPUT = "/kaggle/working"


def kernel_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path(os.environ.get("KIT_BUNDLE", KAGGLE_BUNDLE)),
                        help="the bundle dataset (MANIFEST.json, wheels/, weights/)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("KIT_DATA", KAGGLE_DATA)),
                        help="the competition directory")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("KIT_OUTPUT", KAGGLE_OUTPUT)),
                        help="where outputs go")
    return parser


def run_step(*args: str) -> None:
    """Run ``python -m ARGS``; stop the kernel with its exit status if it fails."""
    print("$ python -m " + " ".join(map(str, args)), flush=True)
    done = subprocess.run([sys.executable, "-m", *map(str, args)])
    if done.returncode != 0:
        raise SystemExit(f"step 'python -m {args[0]}' failed with exit code {done.returncode}")


def bundle_models(bundle: Path) -> dict[str, str]:
    """``{model folder name: type}`` from the bundle's MANIFEST.json."""
    return json.loads((bundle / "MANIFEST.json").read_text())["models"]


def infer(argv=None) -> int:
    """Predict the test images with a bundled model; write and validate submission.csv."""
    parser = kernel_parser("Write submission.csv with a model from the bundle (internet off).")
    parser.add_argument("--model", default=os.environ.get("KIT_MODEL"),
                        help="model folder name under weights/ (default: the first in the manifest)")
    args = parser.parse_args(argv)
    models = bundle_models(args.bundle)
    if not models:
        raise SystemExit(f"{args.bundle} is a code-only bundle: build it with --weights MODEL_DIR")
    name = args.model or sorted(models)[0]
    if name not in models:
        raise SystemExit(f"--model {name!r}: the bundle holds {sorted(models)}")
    args.out.mkdir(parents=True, exist_ok=True)
    submission = args.out / "submission.csv"
    ids = args.data / "sample_submission.csv"
    run_step("kit.predict", "--model", args.bundle / "weights" / name, "--images", args.data / "test",
             *(["--ids", ids] if ids.is_file() else []), "--out", submission)
    run_step("kit.submission", submission, "--data", args.data)
    print(f"submission: {submission} (model {name}, type {models[name]})")
    return 0


def train(model: str, argv=None) -> int:
    """Train ``model`` on one fold of the competition data; weights go to OUT/<model>-fold<K>."""
    parser = kernel_parser(f"Train {model} on one fold; the model folder lands in --out.")
    parser.add_argument("--fold", type=int, default=int(os.environ.get("KIT_FOLD", 0)), help="held-out fold")
    parser.add_argument("--config", type=Path, default=os.environ.get("KIT_CONFIG"),
                        help="model config YAML (default: the kit's packaged config)")
    args, extra = parser.parse_known_args(argv)
    out = args.out / f"{model}-fold{args.fold}"
    run_step("kit.train", model, "--data", args.data, "--fold", args.fold, "--out", out,
             *(["--config", args.config] if args.config else []), *extra)
    print(f"model folder: {out}")
    return 0


def train_folds(argv=None) -> int:
    """Train every fold of a model (``kit.train_folds``): OUT/<model>-folds holds the fold
    runs, the whole-set oof.csv and the fold ensemble (the submission model)."""
    parser = kernel_parser("Train every fold of a model; the fold ensemble lands in --out.")
    parser.add_argument("--model", default=os.environ.get("KIT_MODEL", "maskrcnn"),
                        help="model family (maskrcnn, cellpose, detectron2, ...)")
    parser.add_argument("--config", type=Path, default=os.environ.get("KIT_CONFIG"),
                        help="model config YAML (default: the kit's packaged config)")
    parser.add_argument("--parallel", type=int, default=int(os.environ.get("KIT_PARALLEL", 0)) or None,
                        help="folds side by side (default: one per GPU)")
    args, extra = parser.parse_known_args(argv)
    parallel = args.parallel
    if parallel is None:
        import torch

        parallel = max(1, torch.cuda.device_count())
    out = args.out / f"{args.model}-folds"
    run_step("kit.train_folds", args.model, "--data", args.data, "--out", out,
             "--parallel", parallel, *(["--config", args.config] if args.config else []), *extra)
    print(f"fold ensemble: {out / 'ensemble'}")
    return 0
