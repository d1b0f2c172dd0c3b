"""Kaggle training kernel for detectron2: install the kit from the bundle, train one fold, keep the weights.

Push: kaggle kernels push -p kernels/train-detectron2. Set KIT_FOLD / KIT_CONFIG, or pass --fold / --config.
The bundle must carry detectron2: python build_bundle.py --with-detectron2 ... (after make detectron2).
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

from kit.kaggle_kernel import train  # noqa: E402  (importable only after the install above)

sys.exit(train("detectron2"))
