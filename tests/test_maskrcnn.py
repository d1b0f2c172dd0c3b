"""Mask R-CNN: config, network, mask targets from crops, data pipeline, training, resume, predict."""
import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from kit import config as kconfig
from kit.models.maskrcnn import (DEFAULT_CONFIG_FILE, MaskRCNNConfig, MaskRCNNModel, ModelConfig,
                                 build_network, load_config, load_pretrained)
from kit.models.maskrcnn.data import (InstanceDataset, augment, boxes_of, instance_crops,
                                      instance_crops_reference, repeat_by_type)
from kit.models.maskrcnn.network import crop_mask_targets
from kit.postprocess import postprocess
from tests.conftest import TINY_MASKRCNN as TINY
from tests.conftest import run_module

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(TINY)
    return p


# ---------------------------------------------------------------------------------------------
# config and network


def _assert_config_error(tmp_path, text: str, match: str) -> None:
    """The config file ``text`` (written to disk) fails to load with ``match`` in the error."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(kconfig.ConfigError, match=match):
        load_config(bad)


def test_default_yaml_equals_dataclass_defaults_and_unknown_keys_fail(tmp_path):
    assert kconfig.to_dict(load_config()) == kconfig.to_dict(MaskRCNNConfig())
    assert DEFAULT_CONFIG_FILE.is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  anchor_size: [8]\n")
    with pytest.raises(kconfig.ConfigError, match=r"model: unknown key\(s\) \['anchor_size'\]; valid keys"):
        load_config(bad)
    bad.write_text("model:\n  anchor_sizes: [8, 16]\n")
    with pytest.raises(kconfig.ConfigError, match="one size per FPN level"):
        load_config(bad)


def test_network_matches_the_seed_settings_and_torchvision_keys():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    cfg = ModelConfig()
    net = build_network(cfg)
    ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    assert set(net.state_dict()) == set(ref.state_dict())  # torchvision checkpoints load by name
    ag = net.rpn.anchor_generator
    assert [s[0] for s in ag.sizes] == [16, 32, 64, 128, 256] and ag.num_anchors_per_location() == [3] * 5
    assert net.rpn._pre_nms_top_n == {"training": 2000, "testing": 2000}
    assert net.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    rh = net.roi_heads
    assert rh.detections_per_img == 1000 and rh.fg_bg_sampler.batch_size_per_image == 128
    assert rh.box_roi_pool.aligned and rh.box_roi_pool.sampling_ratio == 0
    assert net.transform.min_size == (800,) and net.transform.max_size == 1333
    assert isinstance(net.backbone.body.bn1, torch.nn.BatchNorm2d)
    s = build_network(dataclasses.replace(cfg, stride_in_1x1=True, backbone_depth=50)).backbone.body
    assert s.layer2[0].conv1.stride == (2, 2) and s.layer2[0].conv2.stride == (1, 1)
    assert net.backbone.body.layer2[0].conv2.stride == (2, 2)


def test_crop_mask_targets_equal_full_image_roi_align():
    """Targets from padded crops == ROIAlign(aligned) of the full-image masks, at any scale."""
    from torchvision.ops import roi_align

    rng = np.random.default_rng(0)
    h, w = 60, 80
    full = np.zeros((3, h, w), np.uint8)
    full[0, 5:20, 10:30] = 1
    full[1, 30:58, 40:79] = 1
    full[1, 40:45, 50:60] = 0
    full[2, 0:12, 0:9] = 1
    from kit import rle

    crops, origin = instance_crops(rle.encode_stack(full), (h, w))
    sx, sy = 1.7, 1.3
    n = 50
    idx = rng.integers(0, 3, n)
    xy = rng.uniform(0, 70, (n, 2)) * [sx, sy]
    props = np.concatenate([xy, xy + rng.uniform(3, 40, (n, 2)) * [sx, sy]], 1)
    t = {"masks": torch.from_numpy(crops), "mask_origin": torch.from_numpy(origin).float(),
         "mask_scale": torch.tensor([sx, sy])}
    got = crop_mask_targets([t], [torch.tensor(props, dtype=torch.float32)], [torch.tensor(idx)], 28)
    b = torch.tensor(props / [sx, sy, sx, sy], dtype=torch.float32)
    rois = torch.cat([torch.tensor(idx, dtype=torch.float32)[:, None], b], 1)
    ref = roi_align(torch.from_numpy(full)[:, None].float(), rois, (28, 28), 1.0, 0, True)[:, 0] >= 0.5
    assert torch.equal(got.bool(), ref)


def test_instance_crops_match_reference_and_augment_geometry(synth_dir):
    from kit.data import read_competition_dir

    recs = read_competition_dir(synth_dir).train[:4]
    rng = np.random.default_rng(1)
    for rec in recs:
        crops, origin = instance_crops(rec.rles, rec.shape)
        ref_c, ref_o = instance_crops_reference(rec.rles, rec.shape)
        np.testing.assert_array_equal(crops, ref_c)
        np.testing.assert_array_equal(origin, ref_o)
        stack = rec.stack()
        hf, vf, rt = (bool(v) for v in rng.integers(0, 2, 3))
        win = (7, 5, 150, 120)
        img, c2, o2 = augment(rec.load_image(), crops, origin, hflip=hf, vflip=vf, rot90=rt, window=win)
        st = stack[:, :, ::-1] if hf else stack
        st = st[:, ::-1] if vf else st
        st = np.rot90(st, axes=(1, 2)) if rt else st
        st = st[:, win[1]:win[3], win[0]:win[2]]
        boxes, keep = boxes_of(c2, o2)
        for k in range(len(st)):
            assert keep[k] == st[k].any()
            if keep[k]:
                ys, xs = np.nonzero(st[k])
                assert tuple(boxes[k]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert c2[k].sum() == st[k].sum()


def test_instance_crops_edge_cases():
    crops, origin = instance_crops([], (10, 12))
    assert crops.shape == (0, 2, 2) and origin.shape == (0, 2)
    crops, origin = instance_crops(["", "1 3"], (10, 12))   # empty mask + pixels (0, 0..2)
    assert crops.shape == (2, 3, 5) and not crops[0].any()
    assert crops[1, 1, 1:4].all() and crops[1].sum() == 3
    boxes, keep = boxes_of(crops, origin)
    assert keep.tolist() == [False, True] and boxes[1].tolist() == [0, 0, 3, 1]
    # a run wrapping over a row end (row-major RLE) spans the full width
    crops, origin = instance_crops(["11 4"], (10, 12))
    assert crops.shape == (1, 4, 14) and crops.sum() == 4


def test_dataset_sample_is_consistent(synth_dir):
    from kit.data import read_competition_dir

    recs = read_competition_dir(synth_dir).train[:2]
    ds = InstanceDataset(recs, lambda r: 1, [100], 400, crop=64, seed=3)
    x, t = ds[0]
    assert x.shape[0] == 3 and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert max(x.shape[1:]) <= 64 + 1
    n = len(t["boxes"])
    assert t["labels"].shape == (n,) and t["masks"].shape[0] == n and t["mask_origin"].shape == (n, 2)
    if n:
        assert bool((t["boxes"][:, 2:] > t["boxes"][:, :2]).all())
    ds.set_epoch(1)
    x2, _ = ds[0]
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], x)   # deterministic in (seed, epoch, index)


def test_repeat_lists_a_cell_types_images_again_each_copy_its_own_crop(synth_dir, tmp_path):
    from kit.data import read_competition_dir

    recs = read_competition_dir(synth_dir).train
    astro = [r.id for r in recs if r.cell_type == "astro"]
    assert astro and len(astro) < len(recs)
    rep = repeat_by_type(recs, {"astro": 3})
    assert len(rep) == len(recs) + 2 * len(astro)
    assert [r.id for r in rep if r.cell_type == "astro"] == [i for i in astro for _ in range(3)]
    assert [r.id for r in rep if r.cell_type != "astro"] == [r.id for r in recs if r.cell_type != "astro"]
    assert [r.id for r in repeat_by_type(recs, {})] == [r.id for r in recs]
    ds = InstanceDataset(rep, lambda r: 1, [300], 600, crop=64, seed=3)
    first = next(i for i, r in enumerate(rep) if r.cell_type == "astro")
    crops = [ds[first + k][0] for k in range(3)]   # one image, three copies: three crops
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[1], crops[2])

    _assert_config_error(tmp_path, "train:\n  repeat: {glia: 2}\n",
                         r"train: repeat: unknown cell type 'glia'")
    _assert_config_error(tmp_path, "train:\n  repeat: {astro: 0}\n", r"repeat.astro must be >= 1, got 0")


# ---------------------------------------------------------------------------------------------
# training, resume, predict


@pytest.fixture(scope="module")
def trained(synth_dir, tiny_cfg, tmp_path_factory):
    from kit.train import main

    out = tmp_path_factory.mktemp("mr") / "run"
    # 3 epochs asked, but a zero time budget stops after the first (evaluated, checkpointed)
    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2",
                 "--config", str(tiny_cfg), "--out", str(out), "--epochs", "3",
                 "--time-budget", "0", "--quiet"]) == 0
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_steps_are_finite_and_recorded(trained):
    rows = _rows(trained / "train_iter.csv")
    assert [int(r["iteration"]) for r in rows] == [1]  # --time-budget 0: one step, then stop
    for r in rows:
        assert r["finite"] == "1"
        for k in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                  "loss_rpn_box_reg", "grad_norm"):
            assert math.isfinite(float(r[k])), k
    ev = _rows(trained / "eval.csv")
    assert len(ev) == 1 and math.isfinite(float(ev[0]["map"])) and ev[0]["best"] == "1"
    doc = json.loads((trained / "model.json").read_text())
    assert doc["type"] == "maskrcnn" and doc["trained"]["best_epoch"] == 1
    assert (trained / "checkpoints" / "last.pt").is_file()
    oof = json.loads((trained / "oof_score.json").read_text())
    assert math.isfinite(oof["map"])
    events = [json.loads(line)["event"] for line in (trained / "train.log").read_text().splitlines()]
    assert {"stage", "epoch", "eval", "best", "oof", "time_budget"} <= set(events)


def test_resume_continues_from_the_checkpoint(trained, synth_dir, tiny_cfg):
    from kit.train import main

    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2",
                 "--config", str(tiny_cfg), "--out", str(trained), "--resume", "--epochs", "2",
                 "--quiet"]) == 0
    rows = _rows(trained / "train_iter.csv")
    # the budget ended epoch 1 after its first step; the resumed run trains epoch 2 whole
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 1]
    ckpt = torch.load(trained / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == 3 and ckpt["stage"] == "sartorius"
    assert len(_rows(trained / "eval.csv")) == 2
    log = [json.loads(line) for line in (trained / "train.log").read_text().splitlines()]
    assert any(e["event"] == "resume" and e["epoch"] == 1 for e in log)


def test_livecell_stage_then_sartorius_with_heads_reinitialised(synth_dir, tiny_cfg, tmp_path):
    """A two-image LIVECell-style COCO json (cell lines from the file names) before the fold."""
    import shutil

    from kit import rle
    from kit.data import read_competition_dir
    from kit.train import main

    recs = read_competition_dir(synth_dir).train[:2]
    images, anns = [], []
    for i, (rec, line) in enumerate(zip(recs, ("A172", "SHSY5Y"))):
        name = f"{line}_Phase_A1_1_00d00h00m_{i}.png"
        shutil.copy(rec.image_path, tmp_path / name)
        images.append({"id": i + 1, "file_name": name, "height": rec.shape[0], "width": rec.shape[1]})
        for j, r in enumerate(rec.rles[:5]):
            anns.append({"id": 100 * i + j, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": rle.mask_to_coco(rle.decode(r, rec.shape))})
    lc = tmp_path / "livecell.json"
    lc.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": 1, "name": "cell"}]}))
    cfg = tmp_path / "lc.yaml"
    cfg.write_text(tiny_cfg.read_text().replace("train:\n", "train:\n  livecell_epochs: 1\n"))
    out = tmp_path / "run"
    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2", "--config",
                 str(cfg), "--out", str(out), "--livecell", str(lc), "--livecell-images",
                 str(tmp_path), "--quiet"]) == 0
    rows = _rows(out / "train_iter.csv")
    assert [r["stage"] for r in rows] == ["livecell", "sartorius", "sartorius"]
    lc_ckpt = torch.load(out / "livecell_model.pt", map_location="cpu", weights_only=True)
    assert lc_ckpt["classes"] == ["A172", "SHSY5Y"]
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    pre = [e for e in log if e["event"] == "pretrained"]
    assert len(pre) == 1 and pre[0]["kind"] == "kit" and len(pre[0]["skipped"]) == 6
    assert pre[0]["missing"] == []


def test_resume_without_checkpoint_is_an_error(synth_dir, tiny_cfg, tmp_path, capsys):
    from kit.train import main

    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2", "--config",
                 str(tiny_cfg), "--out", str(tmp_path / "x"), "--resume", "--quiet"]) == 2
    assert "--resume: no checkpoint" in capsys.readouterr().err


def test_predict_writes_a_valid_submission(trained, synth_dir, tmp_path):
    out = tmp_path / "submission.csv"
    done = run_module("kit.predict", "--model", trained, "--images", synth_dir / "test",
                      "--ids", synth_dir / "sample_submission.csv", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "validated" in done.stdout and out.is_file()


def test_predict_equals_postprocess_of_predict_raw(synth_dir, tiny_cfg):
    """Random weights, but low thresholds so something is detected and painted."""
    from kit.data import read_competition_dir

    cfg = load_config(tiny_cfg)
    low = cfg.postprocess
    for ct in ("shsy5y", "astro", "cort"):
        low = low.with_params(ct, score=0.05, min_area=0, pixel=0.45)
    torch.manual_seed(0)
    model = MaskRCNNModel(dataclasses.replace(cfg, postprocess=low), device="cpu")
    image = read_competition_dir(synth_dir).test[0].load_image()
    raw = model.predict_raw(image)
    assert raw.masks.shape[1:] == (28, 28) and len(raw) > 0
    assert raw.boxes[:, 2].max() <= image.shape[1] + 1e-3 and raw.boxes[:, 3].max() <= image.shape[0] + 1e-3
    labels = model.predict(image, "cort")
    ref = postprocess(raw, None, low)   # config cell_type: vote -> the given type is ignored
    np.testing.assert_array_equal(labels, ref)
    assert labels.max() > 0


def test_pretrained_reports_skipped_heads(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    net = build_network(ModelConfig())
    rep = load_pretrained(net, tmp_path / "coco.pth", ["shsy5y", "astro", "cort"])
    assert rep["kind"] == "torchvision"
    assert set(rep["skipped"]) == {f"roi_heads.{k}.{p}" for k in ("box_predictor.cls_score",
                                                                    "box_predictor.bbox_pred",
                                                                    "mask_predictor.mask_fcn_logits")
                                   for p in ("weight", "bias")}
    assert torch.equal(net.state_dict()["backbone.body.conv1.weight"], coco.state_dict()["backbone.body.conv1.weight"])
    # a kit checkpoint of other classes with the same count: heads re-initialised by name
    other = build_network(dataclasses.replace(ModelConfig(), classes=("a", "b", "c")))
    torch.save({"model": other.state_dict(), "classes": ["a", "b", "c"]}, tmp_path / "kit.pt")
    rep = load_pretrained(net, tmp_path / "kit.pt", ["shsy5y", "astro", "cort"])
    assert rep["kind"] == "kit" and len(rep["skipped"]) == 6 and rep["missing"] == []
    with pytest.raises(FileNotFoundError):
        load_pretrained(net, tmp_path / "nope.pth", ["shsy5y"])


# ---------------------------------------------------------------------------------------------
# one class for every cell type (model.classes: [cell])


def test_one_class_config_needs_the_given_cell_type(tmp_path):
    bad = tmp_path / "vote.yaml"
    bad.write_text("model:\n  classes: [cell]\n")
    with pytest.raises(kconfig.ConfigError, match="set cell_type: given"):
        load_config(bad)


def test_one_class_model_trains_and_paints_with_the_given_type(synth_dir, tiny_cfg, tmp_path):
    """Every instance is class 1 in training; predictions carry the type they are given (so
    they fuse with a per-type model's), and without a type the model refuses."""
    from kit.data import read_competition_dir
    from kit.models.ensemble.fusion import fuse_detections
    from kit.train import main
    from kit import CELL_TYPES

    cfg = tmp_path / "one.yaml"
    cfg.write_text(tiny_cfg.read_text().replace("model:\n", "model:\n  classes: [cell]\n")
                   + "cell_type: given\n")
    out = tmp_path / "run"
    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2",
                 "--config", str(cfg), "--out", str(out), "--time-budget", "0", "--quiet"]) == 0
    model = MaskRCNNModel.load(out, device="cpu")
    assert model.one_class and model.net.roi_heads.box_predictor.cls_score.out_features == 2
    assert torch.load(out / "model.pt", weights_only=True)["classes"] == ["cell"]

    low = model.config.postprocess
    for ct in CELL_TYPES:
        low = low.with_params(ct, score=0.0, min_area=0, pixel=0.3)
    model.config = dataclasses.replace(model.config, postprocess=low)
    image = read_competition_dir(synth_dir).test[0].load_image()
    with pytest.raises(ValueError, match="one class for every cell type"):
        model.predict_raw(image)
    with pytest.raises(ValueError, match="one class for every cell type"):
        model.predict(image)
    raw = model.predict_raw(image, cell_type="astro")
    assert len(raw) > 0 and raw.class_names == CELL_TYPES
    assert set(raw.classes.tolist()) == {CELL_TYPES.index("astro")}
    labels = model.predict(image, "astro")
    np.testing.assert_array_equal(labels, postprocess(raw, "astro", low))
    assert labels.max() > 0
    # fuses with a model of the three classes (same class names)
    torch.manual_seed(0)
    per_type = MaskRCNNModel(load_config(tiny_cfg), device="cpu").predict_raw(image)
    fused = fuse_detections([raw, per_type])
    assert fused.class_names == CELL_TYPES and len(fused) >= len(raw)

    # kit.predict: the type comes from the model folder's cell-type classifier
    sub = tmp_path / "submission.csv"
    done = run_module("kit.predict", "--model", out, "--images", synth_dir / "test",
                      "--ids", synth_dir / "sample_submission.csv", "--out", sub, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "validated" in done.stdout and sub.is_file()


# ---------------------------------------------------------------------------------------------
# a narrower FPN (model.fpn_channels)


def test_fpn_channels_and_mask_pool_size_out_of_range_are_config_errors(tmp_path):
    _assert_config_error(tmp_path, "model:\n  fpn_channels: 8\n",
                         r"fpn_channels must be in \[16, 512\], got 8")
    _assert_config_error(tmp_path, "model:\n  mask_pool_size: 6\n",
                         r"mask_pool_size must be in \[7, 56\], got 6")


def test_a_narrower_fpn_with_finer_masks_trains_saves_and_loads(synth_dir, tiny_cfg, tmp_path):
    """fpn_channels narrows every FPN level and the mask head, mask_pool_size sets its ROIAlign
    (masks twice that); kit.train trains, saves and scores such a model, and the folder loads
    the same weights into the same shapes. train.repeat lengthens the pass by the copies."""
    from kit.data import read_competition_dir
    from kit.train import main

    cfg = tmp_path / "narrow.yaml"
    cfg.write_text(tiny_cfg.read_text().replace("model:\n", "model:\n  fpn_channels: 64\n"
                                                             "  mask_pool_size: 21\n")
                   .replace("train:\n", "train:\n  repeat: {astro: 2}\n"))
    out = tmp_path / "run"
    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2",
                 "--config", str(cfg), "--out", str(out), "--time-budget", "0", "--quiet"]) == 0
    events = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    split = next(e for e in events if e["event"] == "split")
    stage = next(e for e in events if e["event"] == "stage")
    val = {row["id"] for row in _rows(out / "val.csv")}
    fit = [row["id"] for row in _rows(out / "folds.csv") if row["fold"] != "0" and row["id"] not in val]
    types = {r.id: r.cell_type for r in read_competition_dir(synth_dir).train}
    n_astro = sum(types[i] == "astro" for i in fit)
    assert len(fit) == split["n_train"] and n_astro > 0
    assert stage["repeat"] == {"astro": 2} and stage["n_images"] == len(fit) + n_astro
    model = MaskRCNNModel.load(out, device="cpu")
    net = model.net
    assert model.config.model.fpn_channels == 64 and net.backbone.out_channels == 64
    assert {b[0].out_channels for b in net.backbone.fpn.layer_blocks} == {64}
    wide = build_network(dataclasses.replace(model.config.model, fpn_channels=256))
    inner = lambda n: [b[0].in_channels for b in n.backbone.fpn.inner_blocks]  # noqa: E731
    assert inner(net) == inner(wide) == [256, 512, 1024, 2048]   # the ResNet's stages, unchanged
    assert {layer[0].out_channels for layer in net.roi_heads.mask_head} == {64}
    assert net.roi_heads.mask_predictor.conv5_mask.in_channels == 64
    assert net.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    assert net.roi_heads.box_predictor.cls_score.out_features == 4   # 3 cell types + background
    count = lambda n: sum(p.numel() for p in n.parameters())  # noqa: E731
    assert count(net) < count(wide) / 1.5
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    for k, v in net.state_dict().items():
        assert torch.equal(saved[k], v), k
    assert json.loads((out / "oof_score.json").read_text())["n_images"] > 0

    test = read_competition_dir(synth_dir).test[0]
    image = test.load_image()
    assert net.roi_heads.mask_roi_pool.output_size == (21, 21)
    assert model.predict_raw(image).masks.shape[1:] == (42, 42)
    labels = model.predict(image, "cort")
    assert labels.dtype == np.int32 and labels.shape == test.shape


def _events(out, name):
    return [e for e in map(json.loads, (out / "train.log").read_text().splitlines())
            if e["event"] == name]


def test_a_specialist_fine_tunes_one_cell_type_and_segments_its_images(synth_dir, tiny_cfg, tmp_path):
    """train.specialize: after the all-type stage, a copy fine-tuned on one type's training images
    alone (without validation images its last epoch is kept); the folder lists it in model.json,
    and images of that type, and only those, go through it."""
    from kit.data import read_competition_dir
    from kit.models.maskrcnn.model import specialist_file
    from kit.train import main

    cfg = tmp_path / "spec.yaml"
    cfg.write_text(tiny_cfg.read_text().replace(
        "train:\n", "train:\n  specialize: {astro: 2}\n  specialize_lr: 0.001\n"))
    out = tmp_path / "run"
    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2",
                 "--val-fraction", "0", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    types = {r.id: r.cell_type for r in read_competition_dir(synth_dir).train}
    fit = [row["id"] for row in _rows(out / "folds.csv") if row["fold"] != "0"]
    n_astro = sum(types[i] == "astro" for i in fit)
    stages = {e["stage"]: e for e in _events(out, "stage")}
    assert stages["sartorius"]["n_images"] == len(fit)
    assert stages["specialist:astro"]["n_images"] == n_astro > 0
    iters = _rows(out / "train_iter.csv")
    spec_iters = [r for r in iters if r["stage"] == "specialist:astro"]
    assert len(spec_iters) == 2 * min(2, math.ceil(n_astro / 2))   # 2 passes, max_iters_per_epoch 2
    assert float(spec_iters[0]["lr"]) <= 0.001
    (kept,) = _events(out, "specialist")
    assert kept["kept"] and kept["cell_type"] == "astro" and kept["val_images"] == 0

    doc = json.loads((out / "model.json").read_text())
    assert doc["specialists"]["astro"]["weights"] == specialist_file("astro")
    general = torch.load(out / "model.pt", weights_only=True)["model"]
    special = torch.load(out / specialist_file("astro"), weights_only=True)["model"]
    assert general.keys() == special.keys()
    assert any(not torch.equal(general[k], special[k]) for k in general)
    model = MaskRCNNModel.load(out, device="cpu")
    assert set(model.specialists) == {"astro"}
    image = read_competition_dir(synth_dir).test[0].load_image()
    alone = {"all": MaskRCNNModel(model.config, model.net, "cpu"),
             "astro": MaskRCNNModel(model.config, model.specialists["astro"], "cpu")}
    for cell_type, which in (("astro", "astro"), ("cort", "all"), ("shsy5y", "all")):
        got, want = model.predict_raw(image, cell_type=cell_type), alone[which].predict_raw(image)
        assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.masks, want.masks)
    given = dataclasses.replace(model.config, cell_type="given")
    routed = MaskRCNNModel(given, model.net, "cpu", specialists=model.specialists)
    assert np.array_equal(routed.predict(image, "astro"),
                          MaskRCNNModel(given, model.specialists["astro"], "cpu").predict(image, "astro"))
    # a run that trains again forgets the earlier specialists before it makes its own
    model.drop_specialists(out)
    assert "specialists" not in json.loads((out / "model.json").read_text())
    assert MaskRCNNModel.load(out, device="cpu").specialists == {}


def test_a_specialist_is_kept_only_if_it_beats_the_all_type_weights_on_its_validation_images(
        synth_dir, tiny_cfg, tmp_path):
    """With validation images of the type, epoch 0 (the all-type weights, the type given) is
    scored on them first, each specialist epoch on them alone, and a specialist is kept only if it
    scores higher there; the config's bad values are errors that name the key."""
    from kit.data import read_competition_dir
    from kit.train import main

    cfg = tmp_path / "spec.yaml"
    cfg.write_text(tiny_cfg.read_text().replace("train:\n", "train:\n  specialize: {astro: 2}\n"))
    out = tmp_path / "run"
    assert main(["maskrcnn", "--data", str(synth_dir), "--fold", "0", "--n-folds", "2",
                 "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    types = {r.id: r.cell_type for r in read_competition_dir(synth_dir).train}
    val_astro = [row["id"] for row in _rows(out / "val.csv") if types[row["id"]] == "astro"]
    rows = [r for r in _rows(out / "eval.csv") if r["stage"] == "specialist:astro"]
    assert val_astro and [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert all(r["n_images"] == str(len(val_astro)) and r["cort"] == r["shsy5y"] == "" for r in rows)
    (event,) = _events(out, "specialist")
    scores = [float(r["map"]) for r in rows]
    assert event["all_type_val_map"] == scores[0] and event["val_images"] == len(val_astro)
    assert event["kept"] == (max(scores[1:]) > scores[0])
    listed = json.loads((out / "model.json").read_text()).get("specialists", {})
    assert ("astro" in listed) == event["kept"]

    _assert_config_error(tmp_path, "train:\n  specialize: {glia: 2}\n",
                         r"train: specialize: unknown cell type 'glia'")
    _assert_config_error(tmp_path, "train:\n  specialize: {astro: 0}\n", r"specialize.astro must be >= 1")
    _assert_config_error(tmp_path, "train:\n  specialize_share: 1.0\n", r"specialize_share must be in \(0, 1\)")
