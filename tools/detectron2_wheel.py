"""Build detectron2 from a source tree or tarball the user has, into the wheel cache, and
install it: ``make detectron2 SRC=PATH`` = ``python -m tools.detectron2_wheel --src PATH --install``.

detectron2 publishes no wheels (and its PyPI look-alikes ship without the C++ sources), so the
kit builds one from upstream source: a ``git clone`` of facebookresearch/detectron2 (made on a
machine with internet) or a ``.tar.gz`` / ``.zip`` of it. The build:

* runs ``pip wheel --no-build-isolation --no-deps`` with the interpreter running this script,
  so the C++ extension is compiled against the torch installed there (``torch.utils.cpp_extension``;
  g++ needed, several minutes on 2 cores; ``MAX_JOBS`` = the CPU count);
* compiles CPU kernels only when no CUDA compiler is found. Mask R-CNN R50-FPN does not need
  them: detectron2 takes ROIAlign and NMS from torchvision, so the same wheel runs the model on
  a GPU (the compiled ``detectron2._C`` holds rotated-box and deformable-conv ops only);
* caches: the wheel lands in ``--wheels`` (default ``wheels/``) beside ``detectron2.source.json``
  (the source's sha256 and the torch it was built against); a rebuild happens only when either
  changes;
* builds or fetches the pinned dependencies of ``wheels/detectron2.txt`` into the same folder
  (fvcore and antlr4-python3-runtime publish sdists only: they are built into wheels here, from
  the package index, once);
* ``--install`` then installs all of it offline: ``pip install --no-index --find-links``.

Nothing downloads at run time: the bundle (``build_bundle.py``) copies these wheels.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from kit.atomic import write_atomic
from tools.bundle import BuildError, find_wheel, read_pins

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "wheels" / "detectron2.txt"
STAMP = "detectron2.source.json"


def source_digest(src: Path) -> str:
    """sha256 of a tarball / zip, or of a source tree's file names and contents (``.git`` skipped)."""
    h = hashlib.sha256()
    if src.is_file():
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for path in sorted(p for p in src.rglob("*") if p.is_file() and ".git" not in p.parts):
        h.update(path.relative_to(src).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _source_tree(root: Path) -> Path:
    """The folder holding detectron2's ``setup.py``: ``root`` itself or its one subfolder."""
    if (root / "setup.py").is_file():
        return root
    subs = [p for p in root.iterdir() if p.is_dir() and (p / "setup.py").is_file()]
    if len(subs) == 1:
        return subs[0]
    raise BuildError(f"{root}: no detectron2 source tree here (no setup.py, nor one subfolder "
                     "with it)")


def unpack(src: Path, into: Path) -> Path:
    """The detectron2 source tree of ``src`` (a folder, or a tarball / zip unpacked into ``into``)."""
    if src.is_dir():
        tree = _source_tree(src)
    elif tarfile.is_tarfile(src):
        with tarfile.open(src) as tar:
            tar.extractall(into, filter="data")
        tree = _source_tree(into)
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            z.extractall(into)
        tree = _source_tree(into)
    else:
        raise BuildError(f"--src {src}: not a folder, tarball or zip")
    if not (tree / "detectron2" / "__init__.py").is_file():
        raise BuildError(f"{tree}: setup.py found but no detectron2/ package beside it: not a "
                         "detectron2 source tree")
    return tree


def _torch_version() -> str:
    try:
        import torch
    except ImportError:
        raise BuildError(f"{sys.executable}: torch is not installed; detectron2 compiles against the "
                         "installed torch (run `make setup` first)") from None
    return torch.__version__


def _run(cmd: list[str], what: str, env=None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise BuildError(f"{what} failed (exit {done.returncode}):\n"
                         f"{(done.stdout + done.stderr).strip()[-1500:]}")


def build_detectron2(src: Path, wheels: Path, log=print) -> Path:
    """The cached detectron2 wheel of ``src`` in ``wheels``, built when missing or stale."""
    if not src.exists():
        raise BuildError(f"--src {src}: no such file or folder")
    pins = read_pins(REQUIREMENTS)
    version = pins["detectron2"]
    wheels.mkdir(parents=True, exist_ok=True)
    want = {"source_sha256": source_digest(src), "torch": _torch_version(),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    stamp = wheels / STAMP
    wheel = find_wheel(wheels, "detectron2", version)
    if wheel is not None and stamp.is_file() and json.loads(stamp.read_text()).get("built") == want:
        log(f"detectron2: cached {wheel.name} (same source, torch {want['torch']})")
        return wheel
    log(f"detectron2: building from {src} against torch {want['torch']} "
        "(C++ extension: several minutes on 2 cores)")
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        tree = unpack(src, Path(tmp) / "src")
        out = Path(tmp) / "out"
        _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
              "--disable-pip-version-check", "-w", str(out), str(tree)], "building detectron2", env)
        built = sorted(out.glob("detectron2-*.whl"))
        if len(built) != 1 or not built[0].name.startswith(f"detectron2-{version}-"):
            raise BuildError(f"building detectron2 gave {[p.name for p in built]}; expected one "
                             f"detectron2-{version}-*.whl (wheels/detectron2.txt pins {version})")
        for old in wheels.glob(f"detectron2-{version}-*.whl"):
            old.unlink()
        wheel = write_atomic(wheels / built[0].name, built[0].read_bytes())
    write_atomic(stamp, (json.dumps({"built": want, "wheel": wheel.name}, indent=1) + "\n").encode())
    log(f"detectron2: built {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB)")
    return wheel


def dependency_wheels(wheels: Path, offline: bool = False, log=print) -> list[Path]:
    """Wheels of every pin of ``wheels/detectron2.txt`` but detectron2, built or fetched into
    ``wheels`` when missing (``pip wheel`` builds the sdist-only ones)."""
    out = []
    for name, version in read_pins(REQUIREMENTS).items():
        if name == "detectron2":
            continue
        wheel = find_wheel(wheels, name, version)
        if wheel is None:
            if offline:
                raise BuildError(f"no wheel for {name}=={version} in {wheels} (--offline)")
            log(f"detectron2: fetching {name}=={version}")
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                  "-q", "-w", str(wheels), f"{name}=={version}"], f"pip wheel {name}=={version}")
            wheel = find_wheel(wheels, name, version)
            if wheel is None:
                raise BuildError(f"pip wheel {name}=={version} left no matching wheel in {wheels}")
        out.append(wheel)
    return out


def install(wheels: Path) -> None:
    """Install detectron2 and its pinned dependencies from ``wheels`` (no index)."""
    pins = read_pins(REQUIREMENTS)
    _run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
          "--no-deps", "--disable-pip-version-check", "-q",
          *(f"{n}=={v}" for n, v in pins.items())], "installing detectron2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.detectron2_wheel",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True,
                    help="detectron2 source: a git clone, or a .tar.gz / .zip of one")
    ap.add_argument("--wheels", type=Path, default=REPO / "wheels",
                    help="the wheel cache (default: wheels/)")
    ap.add_argument("--install", action="store_true",
                    help="then pip-install detectron2 and its dependencies from the cache")
    ap.add_argument("--offline", action="store_true",
                    help="fetch no dependency from the package index (all must be cached)")
    args = ap.parse_args(argv)
    try:
        build_detectron2(args.src, args.wheels)
        dependency_wheels(args.wheels, args.offline)
        if args.install:
            install(args.wheels)
            print(f"detectron2: installed into {sys.prefix}")
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
