"""The detectron2 model family (kit.models.d2) and its build (tools.detectron2_wheel).

Needs detectron2 installed (``make detectron2 SRC=...``; CI does it when ../shared/vendor holds
the source); skips otherwise, except the build tool's input checks, which need no compiler.
"""
import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, REAL_SARTORIUS, real_images, real_train_dir, run_module

VENDOR = REPO.parent / "shared" / "vendor"
SOURCE = next(iter(sorted(VENDOR.glob("detectron2-*.tar.gz"))), None) if VENDOR.is_dir() else None

# R18 on 192 px crops at native scale, predicted at 260 px: ~1 s per step on one thread
TINY_D2 = """
detectron2:
  MODEL.RESNETS.DEPTH: 18
  MODEL.RESNETS.RES2_OUT_CHANNELS: 64
  INPUT.MIN_SIZE_TRAIN: [192]
  INPUT.MAX_SIZE_TRAIN: 1333
  INPUT.CROP.ENABLED: true
  INPUT.CROP.TYPE: absolute
  INPUT.CROP.SIZE: [192, 192]
  INPUT.MIN_SIZE_TEST: 260
  INPUT.MAX_SIZE_TEST: 352
  MODEL.RPN.PRE_NMS_TOPK_TRAIN: 300
  MODEL.RPN.POST_NMS_TOPK_TRAIN: 150
  MODEL.RPN.PRE_NMS_TOPK_TEST: 300
  MODEL.RPN.POST_NMS_TOPK_TEST: 150
  MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE: 32
  TEST.DETECTIONS_PER_IMAGE: 100
  SOLVER.BASE_LR: 0.002
  SOLVER.WARMUP_ITERS: 2
  SOLVER.MAX_ITER: 4
  DATALOADER.NUM_WORKERS: 0
train:
  eval_max_images: 1
  device: cpu
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# The build tool: input errors need no compiler


def test_build_tool_names_a_bad_source(tmp_path):
    done = run_module("tools.detectron2_wheel", "--src", tmp_path / "nowhere", "--wheels", tmp_path / "w")
    assert done.returncode == 1 and "nowhere: no such file or folder" in done.stderr
    (tmp_path / "empty").mkdir()
    done = run_module("tools.detectron2_wheel", "--src", tmp_path / "empty", "--wheels", tmp_path / "w")
    assert done.returncode == 1 and "no detectron2 source tree here" in done.stderr
    # a tarball of something else: setup.py without the detectron2 package
    (tmp_path / "other").mkdir()
    _write(tmp_path / "other" / "setup.py", "raise SystemExit('never run')\n")
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "other", arcname="other")
    done = run_module("tools.detectron2_wheel", "--src", tmp_path / "other.tar.gz", "--wheels", tmp_path / "w")
    assert done.returncode == 1 and "not a detectron2 source tree" in done.stderr
    assert not list((tmp_path / "w").glob("*.whl"))


@pytest.mark.skipif(SOURCE is None, reason="no detectron2 source in ../shared/vendor")
def test_build_tool_reuses_the_cached_wheel():
    """`make detectron2` ran before the tests (CI): the same source and torch reuse the wheel."""
    pytest.importorskip("detectron2")
    from tools.detectron2_wheel import STAMP, build_detectron2

    wheels = REPO / "wheels"
    if not (wheels / STAMP).is_file():
        pytest.skip("detectron2 was installed by other means than `make detectron2`")
    lines = []
    wheel = build_detectron2(SOURCE, wheels, log=lines.append)
    assert wheel.name.startswith("detectron2-0.6-cp311-") and wheel.stat().st_size > 1e6
    assert lines and "cached" in lines[0]


# ---------------------------------------------------------------------------------------------
# With detectron2


@pytest.fixture(scope="module")
def d2():
    return pytest.importorskip("detectron2")


def test_config_errors_name_the_file_and_key(d2, tmp_path):
    from kit.config import ConfigError
    from kit.models.d2.config import build_cfg, load_config

    cfg = build_cfg(load_config())
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.MODEL.WEIGHTS == ""  # never a download
    assert cfg.INPUT.MASK_FORMAT == "bitmask" and cfg.MODEL.RESNETS.NORM == "BN"
    # another file's detectron2 keys go over the default file's
    cfg = build_cfg(load_config(_write(tmp_path / "a.yaml", "detectron2:\n  SOLVER.MAX_ITER: 7\n")))
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.INPUT.MASK_FORMAT == "bitmask"
    cases = {
        "detectron2:\n  MODEL.NO_SUCH_KEY: 1\n": r"bad.yaml, key detectron2.MODEL.NO_SUCH_KEY: .*Non-existent",
        "detectron2:\n  SOLVER.BASE_LR: fast\n": r"bad.yaml, key detectron2.SOLVER.BASE_LR: ",
        "detectron2:\n  MODEL.WEIGHTS: http://x/y.pkl\n": r"bad.yaml: .*MODEL.WEIGHTS.* set by the kit",
        "base: nowhere.yaml\n": r"bad.yaml, key base: 'nowhere.yaml' is neither a file nor",
        "train:\n  eval_every_epochs: 0\n": r"bad.yaml, key train: eval_every_epochs must be >= 1",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(_write(tmp_path / "bad.yaml", text))


@pytest.fixture(scope="module")
def real4(tmp_path_factory):
    """5 real training images (2 cort, 2 astro, 1 shsy5y) in a temp folder: the tests hold one
    out and train on 4 (2 of them the validation split)."""
    if not (REAL_SARTORIUS / "train.csv").is_file():
        pytest.skip("real Sartorius data (../shared/data/sartorius) absent")
    return real_train_dir(tmp_path_factory.mktemp("real4") / "data",
                          real_images({"cort": 2, "astro": 2, "shsy5y": 1}))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.usefixtures("torch_one_thread")
def test_train_stops_on_budget_resumes_and_predicts_a_submission(d2, real4, synth_dir, tmp_path):
    """kit.train detectron2 on real crops: a budget stop after one step, --resume to the end,
    the best validation iteration kept, then kit.predict writes a valid submission."""
    config = _write(tmp_path / "tiny.yaml", TINY_D2)
    out = tmp_path / "run"
    ids = sorted(p.stem for p in (real4 / "train").glob("*.png"))
    folds = _write(tmp_path / "folds.csv", "id,fold\n" + "".join(f"{i},{int(k > 0)}\n"
                                                                 for k, i in enumerate(ids)))
    common = ["kit.train", "detectron2", "--data", real4, "--folds", folds, "--fold", 0,
              "--val-fraction", 0.34, "--out", out, "--config", config, "--quiet"]
    done = run_module(*common, "--time-budget", 0)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [r["iteration"] for r in _rows(out / "train_iter.csv")] == ["1"]
    assert (out / "checkpoints" / "model_last.pth").is_file()
    events = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert any(e["event"] == "time_budget" for e in events)

    done = run_module(*common, "--resume")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    iters = [int(r["iteration"]) for r in _rows(out / "train_iter.csv")]
    assert iters == [1, 2, 3, 4]                   # continued, not restarted
    losses = [float(r["loss"]) for r in _rows(out / "train_iter.csv")]
    assert all(np.isfinite(losses))
    evals = _rows(out / "eval.csv")
    assert [int(r["iteration"]) for r in evals][-1] == 4
    assert all(0.0 <= float(r["map"]) <= 1.0 for r in evals)   # never NaN
    best = max(evals, key=lambda r: (float(r["map"]), -int(r["iteration"])))
    doc = json.loads((out / "model.json").read_text())
    assert doc["type"] == "detectron2" and doc["trained"]["best_iteration"] == int(best["iteration"])
    assert (out / "oof_score.json").is_file()

    sub = tmp_path / "submission.csv"
    done = run_module("kit.predict", "--model", out, "--images", synth_dir / "test", "--out", sub,
                      "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_module("kit.submission", sub, "--data", synth_dir).returncode == 0


@pytest.mark.usefixtures("torch_one_thread")
def test_model_folder_round_trip_and_raw_detections(d2, tmp_path):
    """A saved folder loads to the same network; predict_raw's boxes are in original pixels and
    predict == postprocess(predict_raw)."""
    import torch

    from kit.models import load_model
    from kit.models.d2.config import build_cfg, load_config
    from kit.models.d2.model import Detectron2Model
    from kit.postprocess import postprocess
    from kit.synth import make_image

    torch.manual_seed(0)
    config = load_config(_write(tmp_path / "tiny.yaml", TINY_D2))
    model = Detectron2Model(config, build_cfg(config))
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded).__name__ == "Detectron2Model"
    for a, b in zip(model.net.state_dict().values(), loaded.net.state_dict().values()):
        assert torch.equal(a, b)
    image = make_image("cort", np.random.default_rng(0), (260, 352), n_cells=10).image
    raw = loaded.predict_raw(image)
    assert raw.image_shape == (260, 352) and raw.masks.shape[1:] == (28, 28)
    if len(raw):
        assert raw.boxes[:, [0, 2]].max() <= 352 + 1 and raw.boxes[:, [1, 3]].max() <= 260 + 1
        assert ((raw.masks >= 0) & (raw.masks <= 1)).all()
    np.testing.assert_array_equal(loaded.predict(image, "cort"),
                                  postprocess(raw, None, loaded.config.postprocess))


def test_bundle_refuses_a_detectron2_model_without_its_wheels(tmp_path):
    from tools.bundle import BuildError, local_wheels

    with pytest.raises(BuildError, match=r"detectron2==0.6.*`make detectron2 SRC="):
        local_wheels({"detectron2": "0.6", "fvcore": "0.1.5.post20221221"}, tmp_path)


NO_COMPILED_OPS = r"""
import importlib.abc
import sys


class Refuse(importlib.abc.MetaPathFinder):   # as on an image whose torch the wheel was not built for
    def find_spec(self, name, path, target=None):
        if name == "detectron2._C":
            raise ImportError("detectron2._C: undefined symbol (built for another torch)")


sys.meta_path.insert(0, Refuse())
import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from kit.models import load_model
from tests.conftest import tiny_detectron2

torch.set_num_threads(1)
model = load_model(tiny_detectron2(sys.argv[1]))
image = (np.random.default_rng(0).random((128, 160)) * 255).astype(np.uint8)
raw = model.predict_raw(image)
mask = torch.zeros((1, 128, 160), dtype=torch.bool)
mask[0, 10:50, 10:40] = True
target = Instances((128, 160), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 40.0, 50.0]])),
                   gt_classes=torch.tensor([2]), gt_masks=BitMasks(mask))
model.net.train()
with EventStorage():
    losses = model.net([{"image": torch.from_numpy(np.repeat(image[None], 3, 0)).float(),
                         "instances": target}])
sum(losses.values()).backward()
assert "detectron2._C" not in sys.modules
print("ok", len(raw), sorted(losses))
"""


def test_mask_rcnn_needs_no_compiled_ops(d2, tmp_path):
    """The wheel's C++ ops are built for the torch here; on a Kaggle image with another torch
    they do not load. Mask R-CNN R50-FPN never needs them (ROIAlign and NMS are torchvision's):
    with `detectron2._C` unloadable, a model still predicts and a training step runs."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NO_COMPILED_OPS, str(tmp_path / "m")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok") and "loss_mask" in done.stdout


def test_code_only_bundle_with_detectron2_for_its_training_kernel(d2, tmp_path):
    import subprocess
    import sys

    from tools import bundle

    if bundle.find_wheel(REPO / "wheels", "detectron2", "0.6") is None:
        pytest.skip("detectron2 was not built by `make detectron2`")
    done = subprocess.run([sys.executable, str(REPO / "build_bundle.py"), "--out", str(tmp_path / "b"),
                           "--with-detectron2"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "b" / "MANIFEST.json").read_text())
    assert manifest["models"] == {}
    assert any(w.startswith("wheels/detectron2-0.6-") for w in manifest["wheels"])
    assert set(bundle.detectron2_pins()) <= set(manifest["vendored"])


@pytest.mark.usefixtures("torch_one_thread")
def test_livecell_stage_starts_the_sartorius_stage(d2, real4, tmp_path):
    """kit.train detectron2 --livecell: a LIVECell stage (classes = cell lines, no validation)
    whose final weights start the Sartorius stage (new box/mask predictors); --time-budget stops
    both stages and --resume continues the Sartorius one without redoing LIVECell."""
    import torch

    from kit.synth_livecell import JSON_NAME, make_livecell

    lc = make_livecell(tmp_path / "lc", 4, shape=(128, 160))
    config = _write(tmp_path / "tiny.yaml", TINY_D2.replace("SOLVER.WARMUP_ITERS: 2", "SOLVER.WARMUP_ITERS: 0")
                    + "  livecell_epochs: 1\n")
    ids = sorted(p.stem for p in (real4 / "train").glob("*.png"))
    folds = _write(tmp_path / "folds.csv", "id,fold\n" + "".join(f"{i},{int(k > 0)}\n"
                                                                 for k, i in enumerate(ids)))

    def train(out, *extra):
        done = run_module("kit.train", "detectron2", "--data", real4, "--folds", folds, "--fold", 0,
                          "--val-fraction", 0.34, "--out", out, "--config", config, "--quiet",
                          "--livecell", lc / JSON_NAME, "--livecell-images", lc / "images", *extra)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return [json.loads(line) for line in (out / "train.log").read_text().splitlines()]

    # a budget spent at once: one step per stage. The LIVECell step learns (no warm-up); the
    # Sartorius step's rate is the budget cosine's 0, so its backbone is the LIVECell one.
    out = tmp_path / "run"
    events = train(out, "--time-budget", 0)
    stages = [e for e in events if e["event"] == "stage"]
    assert [s["stage"] for s in stages] == ["livecell", "sartorius"]
    assert stages[0]["classes"] == ["A172", "BT474", "BV2", "Huh7"] and stages[0]["max_iter"] == 2
    assert stages[1]["init"] == str(out / "livecell_model.pth")
    assert [e["stage"] for e in events if e["event"] == "time_budget"] == ["livecell", "sartorius"]
    rows = _rows(out / "train_iter.csv")
    assert [(r["stage"], r["iteration"]) for r in rows] == [("livecell", "1"), ("sartorius", "1")]
    assert float(rows[0]["lr"]) > 1e-3 and float(rows[1]["lr"]) == 0.0
    livecell = torch.load(out / "livecell_model.pth", weights_only=True)["model"]
    final = torch.load(out / "model.pth", weights_only=True)["model"]
    head = "roi_heads.box_predictor.cls_score.weight"
    assert livecell[head].shape[0] == 5 and final[head].shape[0] == 4   # classes + background
    convs = [k for k in livecell if k.startswith("backbone.") and k.endswith("conv1.weight")]
    assert len(convs) > 5 and all(torch.equal(livecell[k], final[k]) for k in convs)

    events = train(out, "--resume")
    assert any(e["event"] == "livecell_done" and e.get("resumed") for e in events)
    assert [(r["stage"], int(r["iteration"])) for r in _rows(out / "train_iter.csv")] == [
        ("livecell", 1), ("sartorius", 1), ("sartorius", 2), ("sartorius", 3), ("sartorius", 4)]
