"""Offline installer shipped inside the bundle as ``install.py`` (standard library only).

It runs before the kit is installed, so it imports nothing from the kit. It

1. checks every file listed in ``MANIFEST.json`` against its sha256 (a changed or missing
   file is named, and nothing is installed);
2. installs every wheel the manifest lists with
   ``pip install --no-index --find-links <bundle>/wheels --no-deps`` (``--no-deps`` keeps the
   packages the Kaggle image already has, e.g. its numpy, untouched).

``python install.py [--bundle DIR] [--verify-only]``; exit status 1 on any problem.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

MANIFEST = "MANIFEST.json"


class BundleError(RuntimeError):
    """The bundle is incomplete or changed."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: Path) -> dict:
    """The manifest, checked to hold ``files`` (relative path -> sha256 hex) and ``wheels``
    (relative paths, each also in ``files``); BundleError naming the file otherwise."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing (is {bundle} a kit bundle?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path}: unreadable or not JSON, the bundle is damaged: rebuild or "
                          f"re-download it ({type(e).__name__}: {e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    wheels = manifest.get("wheels") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in files.items()):
        raise BundleError(f"{path}: no 'files' mapping of path -> sha256; the bundle is damaged")
    if not isinstance(wheels, list) or not all(isinstance(w, str) and w in files for w in wheels):
        raise BundleError(f"{path}: no 'wheels' list of files it names; the bundle is damaged")
    return manifest


def verify(bundle: Path) -> dict:
    """Check every listed file's sha256; return the manifest. Raises BundleError naming files."""
    manifest = read_manifest(bundle)
    problems = []
    for rel, digest in sorted(manifest["files"].items()):
        path = bundle / rel
        if not path.is_file():
            problems.append(f"missing file {rel}" + (" (a wheel the bundle needs)" if rel.endswith(".whl") else ""))
        elif sha256(path) != digest:
            problems.append(f"changed file {rel} (sha256 differs from {MANIFEST})")
    if problems:
        raise BundleError(f"bundle {bundle} fails verification:\n  " + "\n  ".join(problems))
    return manifest


def install(bundle: Path, python: str = sys.executable) -> list[str]:
    """Verify, then pip-install the manifest's wheels offline. Returns the wheel file names."""
    manifest = verify(bundle)
    wheels = [bundle / rel for rel in manifest["wheels"]]
    cmd = [python, "-m", "pip", "install", "--no-index", "--find-links", str(bundle / "wheels"),
           "--no-deps", "--disable-pip-version-check", *map(str, wheels)]
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise BundleError(f"pip install from {bundle / 'wheels'} failed with exit code {done.returncode}")
    return [w.name for w in wheels]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                        help="bundle folder (holds MANIFEST.json)")
    parser.add_argument("--verify-only", action="store_true", help="check the files, install nothing")
    args = parser.parse_args(argv)
    try:
        if args.verify_only:
            n = len(verify(args.bundle)["files"])
            print(f"{args.bundle}: {n} files verified")
        else:
            names = install(args.bundle)
            print(f"installed {len(names)} wheels from {args.bundle}: {', '.join(names)}")
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # e.g. a bundle file that cannot be read
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
