"""Shared fixtures: a small synthetic competition directory, made once per test session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_module(*args, check=False, cwd=None):
    """Run ``python -m <args>`` as a subprocess; returns CompletedProcess with text output."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO)
    if check and done.returncode != 0:
        raise AssertionError(f"python -m {' '.join(map(str, args))} exited {done.returncode}\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture
def torch_one_thread():
    """torch on one thread for the test, restored after (model tests on a 2-core machine)."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A 14-train / 3-test synthetic competition directory at a reduced image size."""
    from kit.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth") / "data", n_train=14, n_test=3, seed=3,
                        shape=(260, 352))


@pytest.fixture(scope="session")
def baseline_run(synth_dir, tmp_path_factory):
    """(model folder, CompletedProcess) of ``kit.train baseline`` on synth_dir; read-only for tests."""
    out = tmp_path_factory.mktemp("runs") / "baseline"
    done = run_module("kit.train", "baseline", "--data", synth_dir, "--fold", 0, "--n-folds", 3,
                      "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    return out, done
