"""Write an ensemble model folder: ``python -m kit.ensemble --out DIR --member MODEL_DIR[:WEIGHT]
... [--tta id,hflip]`` (:func:`kit.models.ensemble.make_ensemble`; the ensemble itself is
:mod:`kit.models.ensemble`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kit.models.ensemble import TRANSFORMS, make_ensemble


def _parse_member(text: str) -> tuple[str, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not path:
        return text, 1.0
    try:
        return path, float(weight)
    except ValueError:
        return text, 1.0


def _main(argv=None) -> int:
    from kit.errors import one_line

    parser = argparse.ArgumentParser(
        prog="python -m kit.ensemble", description="Write an ensemble model folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="ensemble folder to write")
    parser.add_argument("--member", action="append", required=True, metavar="DIR[:WEIGHT]",
                        help="member model folder, optionally with its weight (repeat)")
    parser.add_argument("--tta", default="id",
                        help=f"comma-separated TTA views, of {','.join(TRANSFORMS)}")
    args = parser.parse_args(argv)
    try:
        members = [_parse_member(m) for m in args.member]
        out = make_ensemble(args.out, members, [t.strip() for t in args.tta.split(",") if t.strip()])
    except (ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'model.json'}: {len(members)} member(s), TTA {args.tta}")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
