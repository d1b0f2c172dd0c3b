"""The submission path with the network off, as on Kaggle, end to end.

1. a model folder trained on synthetic data, then ``build_bundle.py`` (wheels may be downloaded);
2. a fresh virtual environment holding only what a Kaggle image already has
   (tools/kaggle_has.txt names, versions of wheels/inference.txt), installed from the registry;
3. with the network removed (``unshare -n``: a new network namespace with no interface but a
   down loopback; where unshare is not permitted, pip gets ``--no-index`` and proxies pointing
   to a closed port instead — the test prints which), ``install.py`` installs the bundle and
   ``kernels/infer/infer.py`` writes submission.csv for the synthetic test images;
4. ``kit.submission`` validates it and ``kit.cv`` scores it against the synthetic test labels.
"""
import json
import shutil
import subprocess
import sys

import pytest

from tools import bundle
from tests.conftest import REPO, run_module

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kaggle_env(tmp_path_factory):
    """A venv with only the Kaggle image's packages (pinned like the kit's stack)."""
    return bundle.make_kaggle_like_env(tmp_path_factory.mktemp("kaggle-env") / "venv")


def build_bundle(model, tmp_path):
    """``build_bundle.py --weights model`` into ``tmp_path/bundle`` (wheels may be downloaded)."""
    out_bundle = tmp_path / "bundle"
    done = subprocess.run([sys.executable, str(REPO / "build_bundle.py"), "--weights", str(model),
                           "--out", str(out_bundle), "--wheel-cache", str(tmp_path / "wheels")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return out_bundle


def run_offline_kernel(kaggle_env, out_bundle, synth_dir, tmp_path):
    """``kernels/infer/infer.py`` in the Kaggle-like env with the network off; asserts exit 0,
    returns (CompletedProcess, the kernel's output folder)."""
    prefix, env, how = bundle.offline_command()
    print(f"network off via: {how}")
    work = tmp_path / "working"
    done = subprocess.run([*prefix, str(kaggle_env), str(REPO / "kernels" / "infer" / "infer.py"),
                           "--bundle", str(out_bundle), "--data", str(synth_dir), "--out", str(work)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, work


def test_offline_install_and_inference_kernel(synth_dir, baseline_run, kaggle_env, tmp_path):
    out_bundle = build_bundle(baseline_run[0], tmp_path)

    # the Kaggle-like env has no kit and no cellpose before the install
    probe = subprocess.run([str(kaggle_env), "-c", "import kit"], capture_output=True, cwd=tmp_path)
    assert probe.returncode != 0
    done, work = run_offline_kernel(kaggle_env, out_bundle, synth_dir, tmp_path)
    assert "installed 8 wheels" in done.stdout and "valid (" in done.stdout
    # what got imported came from the bundle's wheels, inside the Kaggle-like env
    where = subprocess.run([str(kaggle_env), "-c", "import importlib.metadata as m, kit, cellpose; print(kit.__file__, m.version('cellpose'))"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(kaggle_env.parents[1]) in where.stdout and "3.1.1.3" in where.stdout

    submission = work / "submission.csv"
    assert run_module("kit.submission", submission, "--data", synth_dir).returncode == 0
    cv_json = tmp_path / "cv.json"
    done = run_module("kit.cv", "--gt", synth_dir / "test_labels.csv", "--pred", submission,
                      "--json", cv_json, "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads(cv_json.read_text())
    assert result["n_images"] == 3 and result["missing_ids"] == [] and 0.0 <= result["map"] <= 1.0


def test_offline_detectron2_model(synth_dir, baseline_run, kaggle_env, tmp_path):
    """A detectron2 model folder: the bundle carries detectron2 and its pinned dependencies (from
    the wheels `make detectron2` built), and the offline kernel predicts with it."""
    pytest.importorskip("detectron2")
    from tests.conftest import tiny_detectron2
    from tools.detectron2_wheel import REQUIREMENTS

    model = tiny_detectron2(tmp_path / "d2model", score=0.3)
    shutil.copy2(baseline_run[0] / "celltype.joblib", model)  # the image types, as kit.train leaves
    out_bundle = build_bundle(model, tmp_path)
    manifest = json.loads((out_bundle / "MANIFEST.json").read_text())
    carried = {w.split("/")[1].split("-")[0].lower() for w in manifest["wheels"]}
    pins = bundle.detectron2_pins()
    assert {bundle.canonical(n).replace("-", "_") for n in pins} <= carried, (pins, carried)
    assert bundle.read_pins(REQUIREMENTS)["detectron2"] == manifest["vendored"]["detectron2"]

    done, work = run_offline_kernel(kaggle_env, out_bundle, synth_dir, tmp_path)
    assert f"installed {len(manifest['wheels'])} wheels" in done.stdout and "valid (" in done.stdout
    where = subprocess.run([str(kaggle_env), "-c", "import detectron2; print(detectron2.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(kaggle_env.parents[1]) in where.stdout
    assert run_module("kit.submission", work / "submission.csv", "--data", synth_dir).returncode == 0
