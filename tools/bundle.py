"""Build the Kaggle dataset an internet-off notebook installs the kit and its models from.

``python build_bundle.py --weights DIR [DIR ...] --out DIR [--slug user/name] [--upload]``

The bundle folder holds::

    dataset-metadata.json   Kaggle dataset metadata (title, id, licenses)
    install.py              offline installer (kit/bundle_install.py): verify, then pip --no-index
    MANIFEST.json           sha256 of every file, the wheels to install, models, versions
    wheels/*.whl            what the Kaggle image lacks (wheels/inference.txt minus the Kaggle
                            list) for the target platform, plus the kit's own wheel; with a
                            detectron2 model, detectron2 and its pins (wheels/detectron2.txt)
                            from the wheels ``make detectron2`` built
    weights/<name>/         one model folder per --weights (model.json, weights, configs)

Vendored wheels are downloaded once into a cache (``wheels/`` of the repository by default)
with ``pip download --only-binary :all: --platform … --python-version … --no-deps``; the
kit's wheel is built locally with a fixed ``SOURCE_DATE_EPOCH`` so that re-running on
unchanged inputs gives byte-identical files and an identical manifest.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kit import __version__
from kit.atomic import atomic_folder
from kit.bundle_install import MANIFEST, sha256

REPO = Path(__file__).resolve().parents[1]
INFERENCE_REQUIREMENTS = REPO / "wheels" / "inference.txt"
DETECTRON2_REQUIREMENTS = REPO / "wheels" / "detectron2.txt"
KAGGLE_HAS = Path(__file__).resolve().parent / "kaggle_has.txt"
FIXED_EPOCH = "315532800"  # 1980-01-01, the earliest zip timestamp: reproducible kit wheel
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                     "manylinux1_x86_64", "any")


class BuildError(RuntimeError):
    """Bad input to the builder; the message says what and where."""


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` from ``name==version`` lines (comments, blanks skipped)."""
    pins = {}
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise BuildError(f"{path} line {line_no}: expected 'name==version', got {line!r}")
        name, version = (s.strip() for s in line.split("==", 1))
        pins[canonical(name)] = version
    return pins


def read_names(path: Path) -> set[str]:
    """Canonical project names from a list or a ``pip freeze`` (``name==v``, ``name @ url``)."""
    names = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[=<>!~ @;\[]", line, maxsplit=1)[0]))
    return names


def vendor_pins(target_freeze: Path | None = None) -> dict[str, str]:
    """Pinned packages the bundle must carry: inference requirements minus the Kaggle image's."""
    has = read_names(target_freeze or KAGGLE_HAS)
    return {n: v for n, v in sorted(read_pins(INFERENCE_REQUIREMENTS).items()) if n not in has}


def detectron2_pins(target_freeze: Path | None = None) -> dict[str, str]:
    """What a detectron2 model needs on top of :func:`vendor_pins`: wheels/detectron2.txt minus
    the Kaggle image's packages."""
    has = read_names(target_freeze or KAGGLE_HAS)
    return {n: v for n, v in read_pins(DETECTRON2_REQUIREMENTS).items() if n not in has}


def local_wheels(pins: dict[str, str], folder: Path) -> list[Path]:
    """Wheels of ``pins`` already in ``folder`` (never downloaded: detectron2 has no wheel to
    download, it is built from source); a BuildError saying how to build them otherwise."""
    missing = [f"{n}=={v}" for n, v in pins.items() if find_wheel(folder, n, v) is None]
    if missing:
        raise BuildError(f"a detectron2 model needs wheels {missing} in {folder}: build them with "
                         "`make detectron2 SRC=path/to/detectron2` (or pass --detectron2-wheels)")
    return [find_wheel(folder, n, v) for n, v in pins.items()]


def _wheel_matches(path: Path, name: str, version: str) -> bool:
    parts = path.name.split("-")
    return len(parts) >= 5 and canonical(parts[0]) == name and parts[1] == version


def find_wheel(cache: Path, name: str, version: str) -> Path | None:
    hits = sorted(p for p in cache.glob("*.whl") if _wheel_matches(p, name, version))
    return hits[0] if hits else None


def fetch_wheels(pins: dict[str, str], cache: Path, python_version: str, offline: bool) -> list[Path]:
    """Wheel files of ``pins`` for the target platform, downloading the missing ones."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for name, version in pins.items():
        wheel = find_wheel(cache, name, version)
        if wheel is None and not offline:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--python-version", python_version, "--implementation", "cp",
                   "--disable-pip-version-check", "-q", "-d", str(cache), f"{name}=={version}"]
            for platform in DEFAULT_PLATFORMS:
                cmd[4:4] = ["--platform", platform]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise BuildError(f"pip download {name}=={version} failed:\n{done.stderr.strip()[-800:]}")
            wheel = find_wheel(cache, name, version)
        if wheel is None:
            raise BuildError(f"no wheel for {name}=={version} in {cache}"
                             + (" (--offline: nothing downloaded)" if offline else ""))
        out.append(wheel)
    return out


def build_kit_wheel(dest: Path) -> Path:
    """Build the kit's wheel from this checkout into ``dest`` (reproducible timestamps)."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=FIXED_EPOCH)
    with tempfile.TemporaryDirectory() as tmp:
        # build from a clean copy: no stale build/ or egg-info can leak into the wheel
        src = Path(tmp) / "src"
        shutil.copytree(REPO / "kit", src / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(REPO / name, src / name)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--disable-pip-version-check", "-q", "-w", str(dest), str(src)],
                              env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"building the kit wheel failed:\n{done.stderr.strip()[-800:]}")
    return next(dest.glob(f"kit-{__version__}-*.whl"))


def check_models(weights: list[Path]) -> dict[str, str]:
    """``{folder name: model type}``; errors for a missing folder, unknown type, name clash.

    No folder at all makes a code-only bundle (what the training kernels install from).
    """
    from kit.models import model_type

    models = {}
    for folder in weights:
        if not folder.is_dir():
            raise BuildError(f"--weights {folder}: no such model folder")
        try:
            kind = model_type(folder)
        except (FileNotFoundError, ValueError) as e:
            raise BuildError(f"--weights {folder}: {e}") from None
        if folder.name in models:
            raise BuildError(f"--weights: two model folders are named {folder.name!r}")
        models[folder.name] = kind
    return models


def dataset_metadata(slug: str, title: str) -> dict:
    if not re.fullmatch(r"[A-Za-z0-9_-]+/[a-z0-9-]{3,50}", slug):
        raise BuildError(f"--slug {slug!r}: expected 'user/dataset-slug' (slug: 3-50 of a-z, 0-9, -)")
    if not 6 <= len(title) <= 50:
        raise BuildError(f"--title {title!r}: Kaggle wants 6 to 50 characters, got {len(title)}")
    return {"title": title, "id": slug, "licenses": [{"name": "CC0-1.0"}]}


def kaggle_credentials() -> bool:
    """True when the kaggle API will find credentials (env variables or kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


# Training state stays out of the bundle: inference reads model.json and the weights only.
TRAINING_STATE = ("__pycache__", "*.tmp", "checkpoints", "checkpoint.pt", "tune_cache")


def _copy_model(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*TRAINING_STATE))


def build(weights: list[Path], out: Path, slug: str, title: str, cache: Path,
          target_freeze: Path | None = None, python_version: str = "3.11", offline: bool = False,
          detectron2_wheels: Path = REPO / "wheels", with_detectron2: bool = False) -> dict:
    """Assemble the bundle in a temp folder next to ``out`` and rename it into place.
    detectron2's wheels come along with a detectron2 model, or with ``with_detectron2`` (a
    bundle the detectron2 training kernel installs from)."""
    models = check_models(weights)
    meta = dataset_metadata(slug, title)
    pins = vendor_pins(target_freeze)
    vendored = fetch_wheels(pins, cache, python_version, offline)
    if with_detectron2 or "detectron2" in models.values():
        extra = {n: v for n, v in detectron2_pins(target_freeze).items() if n not in pins}
        vendored += local_wheels(extra, detectron2_wheels)
        pins = {**pins, **extra}
    with atomic_folder(out) as tmp:
        (tmp / "wheels").mkdir()
        for wheel in vendored:
            shutil.copy2(wheel, tmp / "wheels" / wheel.name)
        kit_wheel = build_kit_wheel(tmp / "wheels")
        for folder in weights:
            _copy_model(folder, tmp / "weights" / folder.name)
        shutil.copy2(REPO / "kit" / "bundle_install.py", tmp / "install.py")
        (tmp / "dataset-metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
        files = {p.relative_to(tmp).as_posix(): sha256(p)
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": 1,
            "kit_version": __version__,
            "python_version": python_version,
            "wheels": sorted(f"wheels/{w.name}" for w in [*vendored, kit_wheel]),
            "vendored": pins,
            "models": models,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def make_kaggle_like_env(venv: Path) -> Path:
    """A fresh venv holding only what a Kaggle image has (``kaggle_has.txt`` names, versions of
    ``wheels/inference.txt``), installed from the registry. Returns its python. Re-used if present."""
    python = venv / "bin" / "python"
    stamp = venv / ".kaggle-like"
    if stamp.is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    has = read_names(KAGGLE_HAS)
    pins = [f"{n}=={v}" for n, v in read_pins(INFERENCE_REQUIREMENTS).items() if n in has]
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"installing the Kaggle-like environment failed:\n{done.stderr.strip()[-800:]}")
    stamp.write_text("\n".join(pins) + "\n")
    return python


def offline_command() -> tuple[list[str], dict, str]:
    """(command prefix, environment, description) that run a command with the network off.

    ``unshare -n`` (a new network namespace: no interface but a down loopback) where permitted;
    otherwise pip gets ``--no-index`` and every proxy points to a closed local port.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"], env, "unshare -n (new network namespace, no interfaces up)"
    dead = "http://127.0.0.1:9"
    env.update(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead, PIP_NO_INDEX="1")
    return [], env, "pip --no-index with proxies to a closed port (unshare not permitted)"


def upload(out: Path, slug: str, message: str) -> str:
    """Create the Kaggle dataset, or a new version when it exists (zip mode keeps folders)."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    owner, name = slug.split("/")
    exists = any(d.ref == slug for d in api.dataset_list(user=owner, search=name) or [])
    if exists:
        api.dataset_create_version(str(out), version_notes=message, dir_mode="zip")
        return "new version"
    api.dataset_create_new(str(out), dir_mode="zip")
    return "created"


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python build_bundle.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--weights", type=Path, nargs="*", default=[],
                    help="model folders to ship (none: a code-only bundle for the training kernels)")
    io.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    target = parser.add_argument_group("target notebook")
    target.add_argument("--target-freeze", type=Path, default=None,
                        help="`pip freeze` of a Kaggle notebook (default: tools/kaggle_has.txt)")
    target.add_argument("--python-version", default="3.11", help="Python of the Kaggle image")
    target.add_argument("--wheel-cache", type=Path, default=REPO / "wheels",
                        help="where downloaded wheels are kept between builds")
    target.add_argument("--offline", action="store_true", help="use cached wheels only, download nothing")
    target.add_argument("--detectron2-wheels", type=Path, default=REPO / "wheels",
                        help="where `make detectron2` put detectron2's wheels (detectron2 models only)")
    target.add_argument("--with-detectron2", action="store_true",
                        help="carry detectron2's wheels without a detectron2 model (its training kernel)")
    kaggle = parser.add_argument_group("Kaggle dataset")
    user = os.environ.get("KAGGLE_USERNAME", "user")
    kaggle.add_argument("--slug", default=f"{user}/sartorius-kit-bundle", help="dataset id user/slug")
    kaggle.add_argument("--title", default="Sartorius kit bundle", help="dataset title (6-50 chars)")
    kaggle.add_argument("--upload", action="store_true", help="create/version the dataset on Kaggle")
    kaggle.add_argument("--message", default=f"kit {__version__}", help="version notes for --upload")
    args = parser.parse_args(argv)

    if args.upload and not kaggle_credentials():
        print("error: --upload needs Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put "
              "kaggle.json in ~/.kaggle (or $KAGGLE_CONFIG_DIR). Nothing was built or uploaded.",
              file=sys.stderr)
        return 2
    try:
        manifest = build(args.weights, args.out, args.slug, args.title, args.wheel_cache,
                         args.target_freeze, args.python_version, args.offline,
                         args.detectron2_wheels, args.with_detectron2)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bundle {args.out}: {len(manifest['wheels'])} wheels, models {manifest['models']}, "
          f"{len(manifest['files'])} files in {MANIFEST}")
    if args.upload:
        print(f"Kaggle dataset {args.slug}: {upload(args.out, args.slug, args.message)}")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
