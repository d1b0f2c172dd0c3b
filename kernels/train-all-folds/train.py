"""Kaggle training kernel: install the kit from the bundle, train every fold of one model (one
fold per GPU), score the whole train set out of fold, and keep the fold ensemble.

Push: kaggle kernels push -p kernels/train-all-folds. Set KIT_MODEL / KIT_CONFIG, or pass
--model / --config; other options (e.g. --time-budget 50) go to every kit.train.
"""
import argparse
import os
import subprocess
import sys

pre = argparse.ArgumentParser(add_help=False)
pre.add_argument("--bundle", default=os.environ.get("KIT_BUNDLE", "/kaggle/input/sartorius-kit-bundle"))
BUNDLE = pre.parse_known_args()[0].bundle
if subprocess.run([sys.executable, os.path.join(BUNDLE, "install.py"), "--bundle", BUNDLE]).returncode:
    sys.exit("installing the kit from the bundle failed")

from kit.kaggle_kernel import train_folds  # noqa: E402  (importable only after the install above)

sys.exit(train_folds())
