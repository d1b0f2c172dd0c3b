"""``python -m kit.demo``: the demo (``make demo``) under the package's name.

The demo drives the repository around the library (``tools/demo.py``: synthetic data, the
training runs, ``build_bundle.py``, the offline kernel in ``kernels/``), so it runs from a
checkout; the installed package (the bundle's wheel) holds the library only and says so.
``--data DIR`` points the same path at real data, e.g. the Kaggle competition directory.
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    try:
        from tools.demo import main as demo_main
    except ImportError:
        print("error: python -m kit.demo runs from a checkout of the repository (it drives "
              "tools/, kernels/ and build_bundle.py); this installation has the library only",
              file=sys.stderr)
        return 2
    return demo_main(argv, prog="python -m kit.demo")


if __name__ == "__main__":
    sys.exit(main())
