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


def tiny_maskrcnn(folder, score: float = 0.05, nms: float = 0.5, **config):
    """Save a random-init ResNet-18 Mask R-CNN folder for 128-200 px images, its every cell
    type at ``score`` / ``nms`` (``config``: further MaskRCNNConfig fields); returns the folder."""
    from kit.models.maskrcnn import MaskRCNNConfig, MaskRCNNModel, ModelConfig
    from kit.postprocess import PostprocessConfig, TypeParams

    low = TypeParams(score=score, nms=nms, pixel=0.5, min_area=0)
    cfg = MaskRCNNConfig(model=ModelConfig(backbone_depth=18, test_min_size=128, test_max_size=200,
                                           rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=60,
                                           box_detections_per_img=20),
                         postprocess=PostprocessConfig(shsy5y=low, astro=low, cort=low), **config)
    MaskRCNNModel(cfg, device="cpu").save(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def kit_cache(tmp_path_factory):
    """Caches the kit writes (e.g. Cellpose training targets) go to a temporary folder, for
    this process and the command lines it runs, never to the user's ~/.cache."""
    path = tmp_path_factory.mktemp("kit_cache")
    before = os.environ.get("KIT_CACHE")
    os.environ["KIT_CACHE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("KIT_CACHE", None)
    else:
        os.environ["KIT_CACHE"] = before


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


REAL_SARTORIUS = SHARED_DATA / "sartorius"
needs_real_data = pytest.mark.skipif(not (REAL_SARTORIUS / "train.csv").is_file(),
                                     reason="real Sartorius data (../shared/data/sartorius) absent")


@pytest.fixture(scope="session")
def real_train_only_dir(tmp_path_factory):
    """A training-only directory (train.csv + train/, no test/ or sample_submission.csv) of
    18 real images (8 cort, 6 astro, 4 shsy5y): their train.csv rows as they come (metadata
    columns empty) and links to their PNGs. Lives in a temp folder, never in the project."""
    if not (REAL_SARTORIUS / "train.csv").is_file():
        pytest.skip("real Sartorius data (../shared/data/sartorius) absent")
    want = {"cort": 8, "astro": 6, "shsy5y": 4}
    lines = (REAL_SARTORIUS / "train.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    chosen: dict[str, str] = {}
    for row in rows:
        id_, cell_type = row.split(",")[0], row.split(",")[4]
        if id_ not in chosen and sum(t == cell_type for t in chosen.values()) < want[cell_type]:
            chosen[id_] = cell_type
    root = tmp_path_factory.mktemp("real") / "train_only"
    (root / "train").mkdir(parents=True)
    for id_ in chosen:
        (root / "train" / f"{id_}.png").symlink_to(REAL_SARTORIUS / "train" / f"{id_}.png")
    (root / "train.csv").write_text(header + "".join(r for r in rows if r.split(",")[0] in chosen))
    return root
