"""Shared fixtures: a small synthetic competition directory, made once per test session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# ~1-2 s per step on one thread: R50 at 128 px crops, few proposals and ROIs.
TINY_MASKRCNN = """
model:
  train_min_sizes: [128]
  train_max_size: 400
  test_min_size: 128
  test_max_size: 200
  rpn_pre_nms_top_n_train: 300
  rpn_post_nms_top_n_train: 150
  rpn_pre_nms_top_n_test: 300
  rpn_post_nms_top_n_test: 150
  box_batch_size_per_image: 32
  box_detections_per_img: 100
train:
  epochs: 1
  batch_size: 2
  crop: 128
  lr: 0.002
  warmup_iters: 2
  max_iters_per_epoch: 2
  num_workers: 0
  eval_max_images: 1
  device: cpu
"""


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


def tiny_detectron2(folder, score: float = 0.05, nms: float = 0.5, **config):
    """Save a random-init detectron2 Mask R-CNN R18-FPN folder for 128-200 px images, its every
    cell type at ``score`` / ``nms`` (``config``: further Detectron2Config fields); returns the
    folder. Needs detectron2."""
    from kit.models.d2.config import Detectron2Config, build_cfg
    from kit.models.d2.model import Detectron2Model
    from kit.postprocess import PostprocessConfig, TypeParams

    low = TypeParams(score=score, nms=nms, pixel=0.5, min_area=0)
    overrides = {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
                 "MODEL.RESNETS.NORM": "BN", "INPUT.MIN_SIZE_TEST": 128, "INPUT.MAX_SIZE_TEST": 200,
                 "MODEL.RPN.PRE_NMS_TOPK_TEST": 200, "MODEL.RPN.POST_NMS_TOPK_TEST": 60,
                 "TEST.DETECTIONS_PER_IMAGE": 20}
    cfg = Detectron2Config(detectron2=overrides,
                           postprocess=PostprocessConfig(shsy5y=low, astro=low, cort=low), **config)
    Detectron2Model(cfg, build_cfg(cfg)).save(folder)
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
    chosen = real_images({"cort": 8, "astro": 6, "shsy5y": 4})
    return real_train_dir(tmp_path_factory.mktemp("real") / "train_only", chosen)


def real_images(want: dict) -> dict[str, str]:
    """``{id: cell type}`` of the first real train images in train.csv order, ``want[type]``
    images of each cell type."""
    chosen: dict[str, str] = {}
    for row in (REAL_SARTORIUS / "train.csv").read_text().splitlines()[1:]:
        id_, cell_type = row.split(",")[0], row.split(",")[4]
        if id_ not in chosen and sum(t == cell_type for t in chosen.values()) < want[cell_type]:
            chosen[id_] = cell_type
    return chosen


def real_train_dir(root, ids) -> Path:
    """A training directory at ``root`` of the real images ``ids``: ``train/<id>.png`` links to
    their PNGs and their train.csv rows as they come (metadata columns empty). Never in the
    project: ``root`` is a temp folder."""
    lines = (REAL_SARTORIUS / "train.csv").read_text().splitlines(keepends=True)
    (root / "train").mkdir(parents=True)
    for id_ in ids:
        (root / "train" / f"{id_}.png").symlink_to(REAL_SARTORIUS / "train" / f"{id_}.png")
    (root / "train.csv").write_text(lines[0] + "".join(r for r in lines[1:] if r.split(",")[0] in ids))
    return root


def copy_listing_a_specialist(folder: Path, dest: Path, weights: str) -> Path:
    """A copy of the model folder ``folder`` at ``dest`` whose ``model.json`` lists an astro
    specialist with weights file ``weights`` (not created); returns ``dest``."""
    import json
    import shutil

    shutil.copytree(folder, dest)
    doc = json.loads((dest / "model.json").read_text())
    doc["specialists"] = {"astro": {"weights": weights}}
    (dest / "model.json").write_text(json.dumps(doc))
    return dest
