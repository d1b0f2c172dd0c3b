#!/usr/bin/env python
"""Pack the kit, vendored wheels and model folders into a Kaggle dataset: see tools/bundle.py.

python build_bundle.py --weights runs/cellpose runs/maskrcnn --out bundle [--upload]
"""
import sys

from tools.bundle import main

if __name__ == "__main__":
    sys.exit(main())
