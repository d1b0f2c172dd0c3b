"""build_bundle.py / tools.bundle: contents, reproducibility, and every refusal, on real files."""
import json
import shutil
import sys

import pytest

from tools import bundle
from kit.bundle_install import BundleError, verify
from tests.conftest import REPO


def build_cli(*args):
    import subprocess

    return subprocess.run([sys.executable, str(REPO / "build_bundle.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def wheel_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("wheel-cache")


@pytest.fixture(scope="module")
def model_dir(baseline_run):
    return baseline_run[0]


@pytest.fixture(scope="module")
def built(model_dir, wheel_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b1"
    done = build_cli("--weights", model_dir, "--out", out, "--wheel-cache", wheel_cache,
                     "--slug", "someone/sartorius-kit-bundle")
    assert done.returncode == 0, done.stderr
    return out


def test_bundle_contents(built):
    manifest = json.loads((built / "MANIFEST.json").read_text())
    meta = json.loads((built / "dataset-metadata.json").read_text())
    assert meta == {"title": "Sartorius kit bundle", "id": "someone/sartorius-kit-bundle",
                    "licenses": [{"name": "CC0-1.0"}]}
    assert manifest["models"] == {"baseline": "baseline"}
    assert (built / "weights" / "baseline" / "model.json").is_file()
    assert (built / "install.py").read_text() == (REPO / "kit" / "bundle_install.py").read_text()
    names = {w.split("/")[1].split("-")[0].lower() for w in manifest["wheels"]}
    assert {"kit", "cellpose", "fastremap"} <= names and "torch" not in names and "numpy" not in names
    assert all(rel in manifest["files"] for rel in manifest["wheels"])
    assert verify(built)["files"] == manifest["files"]


def test_vendor_list_matches_checked_in_manifest():
    checked_in = bundle.read_pins(REPO / "wheels" / "vendor.txt")
    assert bundle.vendor_pins() == checked_in
    freeze = REPO / "wheels" / "inference.txt"  # a target that has everything vendors nothing
    assert bundle.vendor_pins(freeze) == {}


def test_rebuild_gives_identical_manifest(built, model_dir, wheel_cache, tmp_path):
    again = tmp_path / "b2"
    done = build_cli("--weights", model_dir, "--out", again, "--wheel-cache", wheel_cache,
                     "--slug", "someone/sartorius-kit-bundle", "--offline")
    assert done.returncode == 0, done.stderr
    assert (again / "MANIFEST.json").read_bytes() == (built / "MANIFEST.json").read_bytes()


def test_verification_catches_changed_and_missing_files(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    with open(copy / "weights" / "baseline" / "model.json", "a") as f:
        f.write(" ")
    wheel = next((copy / "wheels").glob("cellpose-*.whl"))
    wheel.unlink()
    with pytest.raises(BundleError) as info:
        verify(copy)
    assert "changed file weights/baseline/model.json" in str(info.value)
    assert f"missing file wheels/{wheel.name} (a wheel the bundle needs)" in str(info.value)
    import subprocess

    done = subprocess.run([sys.executable, str(copy / "install.py"), "--bundle", str(copy)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and wheel.name in done.stderr


def test_refusals(model_dir, wheel_cache, tmp_path):
    out = tmp_path / "b"
    done = build_cli("--weights", tmp_path / "nope", "--out", out, "--wheel-cache", wheel_cache, "--offline")
    assert done.returncode == 2 and "nope: no such model folder" in done.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model.json").write_text('{"type": "yolo"}')
    done = build_cli("--weights", odd, "--out", out, "--wheel-cache", wheel_cache, "--offline")
    assert done.returncode == 2 and "unknown model type 'yolo'" in done.stderr
    done = build_cli("--weights", model_dir, "--out", out, "--wheel-cache", tmp_path / "empty-cache", "--offline")
    assert done.returncode == 2 and "no wheel for cellpose==3.1.1.3" in done.stderr
    done = build_cli("--weights", model_dir, "--out", out, "--title", "abc", "--wheel-cache", wheel_cache,
                     "--offline")
    assert done.returncode == 2 and "6 to 50 characters" in done.stderr
    assert not out.exists()


def test_upload_without_credentials_stops_before_building(model_dir, tmp_path):
    import subprocess

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("KAGGLE_")}
    env["KAGGLE_CONFIG_DIR"] = str(tmp_path / "no-kaggle")
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "build_bundle.py"), "--weights", str(model_dir),
                           "--out", str(tmp_path / "b"), "--upload"],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 2 and "needs Kaggle credentials" in done.stderr
    assert not (tmp_path / "b").exists()


def test_model_copy_leaves_training_state_behind(model_dir, tmp_path):
    """The bundle ships what inference reads: no checkpoint (weights + optimiser) of a run."""
    import shutil

    from tools.bundle import _copy_model

    src = tmp_path / "run"
    shutil.copytree(model_dir, src)
    (src / "checkpoint.pt").write_bytes(b"optimiser state")
    (src / "checkpoints").mkdir()
    (src / "checkpoints" / "last.pt").write_bytes(b"x")
    _copy_model(src, tmp_path / "bundled")
    names = {p.name for p in (tmp_path / "bundled").iterdir()}
    assert "model.json" in names and not names & {"checkpoint.pt", "checkpoints"}
