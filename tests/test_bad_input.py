"""Bad input, as a tired competitor feeds it to the CLIs at 3 a.m.

Every case runs the real command line as a subprocess and asserts: the exit status (2 = bad
input, 1 = a check that failed, 130 = interrupted), ONE line on stderr naming the file (and
line / field / key where there is one), no traceback, and nothing at the target path.
Legitimate inputs written the way people write them (a BOM, blank lines) are accepted.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kit import rle
from tests.conftest import REPO, copy_listing_a_specialist, run_module

SHAPE = (520, 704)
A = rle.encode(np.pad(np.ones((3, 4), bool), ((10, 507), (20, 680))))
B = rle.encode(np.pad(np.ones((5, 5), bool), ((100, 415), (300, 399))))
TRAIN_HEADER = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta\n"


def one_line_error(done, code, *parts):
    """The run failed with ``code`` and one stderr line holding every part, no traceback."""
    err = done.stderr.strip()
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for p in parts:
        assert str(p) in lines[0], (p, lines[0])
    return lines[0]


@pytest.fixture
def gt(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(TRAIN_HEADER + f"a,{A},704,520,cort,,,,\na,{B},704,520,cort,,,,\n"
                    f"b,{B},704,520,astro,,,,\n")
    return path


# ---------------------------------------------------------------------------------------------
# CSV files as people write them


def test_bom_blank_lines_and_crlf_are_accepted(tmp_path, gt):
    sub = tmp_path / "sub.csv"
    sub.write_bytes(b"\xef\xbb\xbfid,predicted\r\n\r\na," + A.encode() + b"\r\n   \r\nb,\r\n\r\n")
    sample = tmp_path / "sample.csv"
    sample.write_bytes(b"\xef\xbb\xbfid,predicted\na,\nb,\n")
    done = run_module("kit.submission", sub, "--sample", sample)
    assert done.returncode == 0 and "valid (2 images, 1 masks)" in done.stdout, done.stderr
    out = tmp_path / "cv.json"
    done = run_module("kit.cv", "--gt", gt, "--pred", sub, "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert {p["id"]: p["n_pred"] for p in json.loads(out.read_text())["per_image"]} == {"a": 1, "b": 0}
    from kit.predict import read_cell_types

    types = tmp_path / "types.csv"
    types.write_bytes(b"\xef\xbb\xbfid,cell_type\r\n\r\na,cort\r\nb,astro\r\n")
    assert read_cell_types(types) == {"a": "cort", "b": "astro"}


def test_cell_types_listing_an_id_twice_with_two_types(tmp_path, gt):
    types = tmp_path / "types.csv"
    types.write_text("id,cell_type\na,cort\nb,astro\na,shsy5y\n")
    out = tmp_path / "sub.csv"
    from kit.models.baseline import BaselineModel

    BaselineModel().save(tmp_path / "m")
    (tmp_path / "img").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros(SHAPE, np.uint8))
    done = run_module("kit.predict", "--model", tmp_path / "m", "--images", tmp_path / "img",
                      "--out", out, "--cell-types", types, "--quiet")
    one_line_error(done, 2, f"{types} line 4, field 'cell_type'", "'shsy5y' for id 'a'",
                   "'cort' on line 2")
    assert not out.exists()


def test_not_utf8_names_file_and_line(tmp_path, gt):
    pred = tmp_path / "pred.csv"
    pred.write_bytes(b"id,predicted\na," + A.encode() + b"\nb,caf\xe9\n")
    done = run_module("kit.cv", "--gt", gt, "--pred", pred, "--quiet")
    one_line_error(done, 2, f"{pred} line 3", "not UTF-8")
    png = tmp_path / "oops.csv"  # a binary file given as a CSV
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    sample = tmp_path / "sample.csv"
    sample.write_text("id,predicted\na,\n")
    done = run_module("kit.submission", png, "--sample", sample)
    one_line_error(done, 1, str(png), "not UTF-8")


@pytest.mark.parametrize("cell, parts", [
    ("١٢ ٣", ["line 2 (id a), field 'predicted'", "U+0661", "ASCII digits 0-9"]),
    ('"1 2\n5 1"', ["line 2 (id a), field 'predicted'", "line break"]),
    ("1 2 3", ["line 2 (id a), field 'predicted'", "token 3: odd number of tokens"]),
    ("0 5", ["line 2 (id a), field 'predicted'", "start 0 < 1"]),
])
def test_bad_rle_cells_say_why(tmp_path, cell, parts):
    sub = tmp_path / "sub.csv"
    sub.write_text(f"id,predicted\na,{cell}\n", encoding="utf-8")
    sample = tmp_path / "sample.csv"
    sample.write_text("id,predicted\na,\n")
    done = run_module("kit.submission", sub, "--sample", sample)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    for p in parts:
        assert p in done.stderr, (p, done.stderr)


def test_header_only_and_empty_files(tmp_path, gt):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = run_module("kit.cv", "--gt", gt, "--pred", empty, "--quiet")
    one_line_error(done, 2, str(empty), "file is empty")
    header_only = tmp_path / "h.csv"
    header_only.write_text(TRAIN_HEADER)
    done = run_module("kit.cv", "--gt", header_only, "--pred", empty, "--quiet")
    one_line_error(done, 2, str(header_only), "no image to score")


# ---------------------------------------------------------------------------------------------
# Broken model folders and weights


def _predict(tmp_path, model):
    import cv2

    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    cv2.imwrite(str(images / "x.png"), np.zeros((64, 80), np.uint8))
    out = tmp_path / "sub.csv"
    done = run_module("kit.predict", "--model", model, "--images", images, "--out", out,
                      "--cell-types", _types(tmp_path), "--quiet")
    assert not out.exists()
    return done


def _types(tmp_path):
    p = tmp_path / "types.csv"
    p.write_text("id,cell_type\nx,cort\n")
    return p


@pytest.mark.parametrize("doc, parts", [
    ('{"type": "baseline"}', ["model.json", "KeyError", "params"]),
    ('{"type": "baseline", "params": [1, 2]}', ["model.json", "cannot load"]),
    ('{"type": "baseline", "par', ["model.json", "cannot load", "JSONDecodeError"]),
    ('["baseline"]', ["model.json", "expected a JSON object"]),
])
def test_broken_baseline_model_json(tmp_path, doc, parts):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(doc)
    one_line_error(_predict(tmp_path, model), 2, *parts)


@pytest.fixture(scope="module")
def maskrcnn_folder(tmp_path_factory):
    """A small random-init Mask R-CNN model folder (ResNet-18, tiny sizes)."""
    pytest.importorskip("torchvision")
    from kit import config as kconfig
    from kit.models.maskrcnn import MaskRCNNConfig, MaskRCNNModel, build_network

    cfg = kconfig.from_dict(MaskRCNNConfig, {"model": {
        "backbone_depth": 18, "test_min_size": 64, "test_max_size": 100,
        "box_detections_per_img": 10}})
    folder = tmp_path_factory.mktemp("mr") / "model"
    MaskRCNNModel(cfg, build_network(cfg.model), "cpu").save(folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "foreign", "text"])
def test_broken_maskrcnn_weights(tmp_path, maskrcnn_folder, damage):
    import shutil

    import torch

    model = tmp_path / "model"
    shutil.copytree(maskrcnn_folder, model)
    weights = model / "model.pt"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "foreign":
        torch.save({"fc.weight": torch.zeros(3, 3)}, weights)
    else:
        weights.write_text("not weights")
    one_line_error(_predict(tmp_path, model), 2, str(weights), "cannot load this Mask R-CNN weights")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_broken_maskrcnn_specialist(tmp_path, maskrcnn_folder, damage):
    """model.json lists an astro specialist (train.specialize) whose weights are gone or cut."""
    model = copy_listing_a_specialist(maskrcnn_folder, tmp_path / "model", "specialist_astro.pt")
    weights = model / "specialist_astro.pt"
    if damage == "missing":
        expected = "specialist 'astro': weights file"
    else:
        weights.write_bytes((model / "model.pt").read_bytes()[:1000])
        expected = "cannot load this Mask R-CNN weights"
    one_line_error(_predict(tmp_path, model), 2, str(weights), expected)


def test_truncated_detectron2_checkpoint(tmp_path):
    ckpt = tmp_path / "model_final.pth"
    import torch

    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    out = tmp_path / "d2"
    done = run_module("kit.import_detectron2", ckpt, "--out", out)
    one_line_error(done, 2, str(ckpt), "cannot load this weights file")
    assert not out.exists()


def test_truncated_tuning_cache(tmp_path, gt):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cache.json").write_text('{"format": 1, "model_ty')
    out = tmp_path / "tuned.yaml"
    done = run_module("kit.tune", "search", "--cache", cache, "--gt", gt, "--out", out)
    one_line_error(done, 2, str(cache / "cache.json"), "tuning cache index")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# The bundle's install.py: the first thing the Kaggle notebook runs


@pytest.mark.parametrize("manifest, parts", [
    ('{"files": {"a.whl": "00', ["MANIFEST.json", "not JSON", "damaged"]),
    ('{"wheels": []}', ["MANIFEST.json", "no 'files' mapping"]),
    ('{"files": {"a.whl": "00"}, "wheels": ["b.whl"]}', ["MANIFEST.json", "no 'wheels' list"]),
    ("[]", ["MANIFEST.json", "no 'files' mapping"]),
])
def test_install_py_on_a_damaged_manifest(tmp_path, manifest, parts):
    (tmp_path / "MANIFEST.json").write_text(manifest)
    done = subprocess.run([sys.executable, str(REPO / "kit" / "bundle_install.py"), "--bundle",
                           str(tmp_path), "--verify-only"], capture_output=True, text=True)
    one_line_error(done, 1, *parts)


# ---------------------------------------------------------------------------------------------
# COCO / LIVECell json


@pytest.mark.parametrize("edit, parts", [
    (lambda d: d["annotations"][0].pop("id"), ["annotations[0] has no 'id'"]),
    (lambda d: d["annotations"][0].pop("category_id"), ["annotations[0] has no 'category_id'"]),
    (lambda d: d["categories"][0].pop("id"), ["categories[0] has no 'id'"]),
    (lambda d: d.update(categories={"id": 1}), ["'categories' must be a list"]),
])
def test_coco_json_missing_keys(tmp_path, edit, parts):
    doc = {"images": [{"id": 1, "file_name": "x.tif", "height": 8, "width": 8}],
           "annotations": [{"id": 5, "image_id": 1, "category_id": 1,
                            "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
           "categories": [{"id": 1, "name": "cort"}]}
    edit(doc)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "eda"
    done = run_module("kit.eda", "--coco", path, "--out", out, "--quiet")
    one_line_error(done, 2, str(path), *parts)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Outputs


def test_output_paths_that_cannot_be_written(tmp_path, gt):
    pred = tmp_path / "pred.csv"
    pred.write_text(f"id,predicted\na,{A}\n")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    done = run_module("kit.cv", "--gt", gt, "--pred", pred, "--json", folder, "--quiet")
    one_line_error(done, 2, str(folder), "is a folder")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    done = run_module("kit.cv", "--gt", gt, "--pred", pred, "--json", blocker / "cv.json", "--quiet")
    one_line_error(done, 2, str(blocker), "is a file")
    assert blocker.read_text() == "a file where a folder should be"
    # kit.predict finds out before predicting anything
    from kit.models.baseline import BaselineModel

    BaselineModel().save(tmp_path / "m")
    done = run_module("kit.predict", "--model", tmp_path / "m", "--images", tmp_path, "--out",
                      folder, "--cell-types", _types(tmp_path))
    one_line_error(done, 2, str(folder), "is a folder")
    assert list(folder.iterdir()) == []


@contextlib.contextmanager
def read_only_folder(path):
    """A folder nobody can write in: mode 555, and for root (who ignores modes) the immutable
    attribute (chattr +i), where the file system has it."""
    path.mkdir()
    path.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = shutil.which("chattr") is not None and subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode == 0
        if not immutable:
            path.chmod(0o755)
            pytest.skip("root can write into any folder here (no chattr +i)")
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def test_read_only_output_folder(tmp_path, gt):
    pred = tmp_path / "pred.csv"
    pred.write_text(f"id,predicted\na,{A}\n")
    with read_only_folder(tmp_path / "ro") as ro:
        done = run_module("kit.cv", "--gt", gt, "--pred", pred, "--json", ro / "cv.json", "--quiet")
        one_line_error(done, 2, str(ro / "cv.json"), "cannot write")
        done = run_module("kit.eda", gt, "--out", ro / "eda", "--quiet")
        one_line_error(done, 2, str(ro / "eda"), "cannot write")
        assert list(ro.iterdir()) == []


def test_train_with_a_bad_config_writes_nothing(tmp_path, synth_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    out = tmp_path / "run"
    done = run_module("kit.train", "maskrcnn", "--data", synth_dir, "--out", out, "--config", bad,
                      "--quiet")
    one_line_error(done, 2, f"{bad}, key train.lr", "expected a number")
    assert not out.exists()
    done = run_module("kit.train", "baseline", "--data", synth_dir, "--out", out, "--folds",
                      tmp_path / "nope.csv", "--quiet")
    one_line_error(done, 2, "--folds", "nope.csv")
    assert not out.exists()


def test_train_on_one_cell_type_stops_before_writing(tmp_path, synth_dir):
    """The cell-type classifier needs two types: a train.csv of one type is refused up front."""
    import pandas as pd

    one = tmp_path / "astro_only"
    one.mkdir()
    (one / "train").symlink_to(Path(synth_dir) / "train")
    df = pd.read_csv(Path(synth_dir) / "train.csv")
    astro = df[df.cell_type == "astro"]
    astro.to_csv(one / "train.csv", index=False)
    ids = sorted(set(astro.id))
    (one / "folds.csv").write_text("id,fold\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
    out = tmp_path / "run"
    done = run_module("kit.train", "baseline", "--data", one, "--out", out, "--folds",
                      one / "folds.csv", "--quiet")
    one_line_error(done, 2, f"{one / 'train.csv'}, field cell_type", "one cell type (astro)")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Interrupts


def test_a_killed_writer_leaves_no_stale_temp_file(tmp_path):
    """A temp file left by a writer killed with -9 is removed by the next write."""
    from kit.atomic import atomic_open

    target = tmp_path / "submission.csv"
    code = ("import os, sys\nfrom kit.atomic import atomic_open\n"
            f"with atomic_open({str(target)!r}) as f:\n    f.write('half')\n    f.flush()\n"
            "    os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert done.returncode == -9
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and not target.exists()
    with atomic_open(target) as f:
        f.write("id,predicted\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    out = tmp_path / "synth"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # SIGINT at its default in the child: a test run started in the background by a
    # non-interactive shell (``cmd &``) inherits it ignored, and Python then keeps it ignored
    proc = subprocess.Popen([sys.executable, "-m", "kit.synth", str(out), "--n-train", "400",
                             "--n-test", "0", "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120   # imports are slow on a loaded machine: wait for the work
    while not any(tmp_path.iterdir()):   # kit.synth's hidden temp folder beside --out
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted" and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# More of the same: wrong combinations, empty folders, broken images, impossible numbers


def test_assorted_mistakes(tmp_path, gt):
    import cv2

    from kit.models.baseline import BaselineModel

    pred = tmp_path / "p.csv"
    pred.write_text(f"id,predicted\na,{A}\n")
    one_line_error(run_module("kit.cv", "--gt", gt, "--pred", pred, "--fold", 1, "--quiet"), 2,
                   "--fold and --folds go together")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_module("kit.cv", "--gt", empty, "--pred", pred, "--quiet"), 2,
                   "looked for train.csv")
    BaselineModel().save(tmp_path / "m")
    out = tmp_path / "s.csv"
    one_line_error(run_module("kit.predict", "--model", empty, "--images", empty, "--out", out),
                   2, str(empty), "no model.json")
    one_line_error(run_module("kit.predict", "--model", tmp_path / "m", "--images", empty,
                              "--out", out), 2, "no images to predict", str(empty))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "x.png").write_text("garbage")
    types = _types(tmp_path)
    one_line_error(run_module("kit.predict", "--model", tmp_path / "m", "--images", imgs,
                              "--out", out, "--cell-types", types, "--quiet"), 2,
                   str(imgs / "x.png"), "cannot decode")
    cv2.imwrite(str(imgs / "x.png"), np.zeros((40, 50), np.uint8))
    ids = tmp_path / "ids.csv"
    ids.write_text("id,predicted\nx,\ny,\n")
    one_line_error(run_module("kit.predict", "--model", tmp_path / "m", "--images", imgs,
                              "--out", out, "--cell-types", types, "--ids", ids, "--quiet"), 2,
                   str(imgs / "y.png"), "not found")
    assert not out.exists()
    one_line_error(run_module("kit.train", "baseline", "--data", tmp_path / "nowhere", "--out",
                              tmp_path / "r"), 2, "nowhere", "not found")
    assert not (tmp_path / "r").exists()
    done = run_module("kit.synth", tmp_path / "syn", "--n-train", -1)
    assert done.returncode == 2 and "n_train must be a non-negative integer" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "syn").exists()
