"""kit.models.maskrcnn.detectron2_keys (and python -m kit.import_detectron2): the key map against detectron2's own parameter list, and equivalence.

Where detectron2 is not installed, the "native" side is an independent re-implementation of
detectron2's R50-FPN Mask R-CNN modules in plain ``torch.nn.functional`` that reads the
detectron2-named tensors directly (FrozenBN, stride in the 1x1 conv, BGR 0-255 input, FPN with
x2 nearest upsampling and a stride-2 max-pool P6, RPN head, ROIAlignV2 pooler, FastRCNN
conv-fc head with background last, mask head with K channels). The converted torchvision
network must agree with it module by module. Where detectron2 is installed, these stand-in
tests skip: tests/test_detectron2_port.py compares against detectron2 itself.
"""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kit import import_detectron2
from kit.models.maskrcnn import detectron2_keys as d2k

FIXTURE = (Path(__file__).resolve().parent / "fixtures"
           / "detectron2_mask_rcnn_R_50_FPN_3x_state_dict_shapes.json")  # see fixtures/README.md
K = 3

pytestmark = pytest.mark.usefixtures("torch_one_thread")
# the plain-torch stand-in for detectron2, only where the real one is absent
stand_in = pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None,
                              reason="detectron2 is installed: test_detectron2_port.py uses it")


def d2_random_state_dict(seed=0):
    """Random tensors of the fixture's shapes, scaled so 50 layers stay finite (var > 0)."""
    shapes = json.loads(FIXTURE.read_text())
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("running_var"):
            v = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean") or k.endswith("bias"):
            v = torch.randn(shape, generator=g) * 0.1
        elif k.endswith("norm.weight"):
            v = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            if "deconv" in k:
                fan_in = shape[0]
            v = torch.randn(shape, generator=g) * math.sqrt(1.0 / fan_in)
        sd[k] = v
    return shapes, sd


@pytest.fixture(scope="module")
def d2_sd():
    return d2_random_state_dict()[1]


def build(norm="frozen_bn", stride_in_1x1=True, image_mean=None, image_std=None):
    import dataclasses

    from kit.models.maskrcnn import ModelConfig, build_network

    kw = {}
    if image_mean is not None:
        kw = dict(image_mean=tuple(image_mean), image_std=tuple(image_std))
    cfg = dataclasses.replace(ModelConfig(), norm=norm, stride_in_1x1=stride_in_1x1,
                              test_min_size=128, test_max_size=160, **kw)
    return build_network(cfg).eval()


# ---------------------------------------------------------------------------------------------
# the key map


def test_every_key_consumed_and_every_torchvision_key_filled():
    shapes, sd = d2_random_state_dict(1)
    tv, rep = d2k.convert(sd, num_classes=K)
    assert sorted(rep.consumed) == sorted(shapes) and rep.skipped == {}
    net = build(norm="bn")
    own = net.state_dict()
    assert set(tv) == set(own)
    for k in own:
        assert tuple(tv[k].shape) == tuple(own[k].shape), k
    net.load_state_dict(tv, strict=True)
    # frozen BN has no counters: convert without them and it still fits exactly
    tv2, _ = d2k.convert(sd, num_classes=K, with_bn_counters=False)
    assert set(tv2) == set(build(norm="frozen_bn").state_dict())


def test_class_dependent_tensors_are_reordered():
    _, sd = d2_random_state_dict(2)
    tv, _ = d2k.convert(sd, num_classes=K)
    cls = sd["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(tv["roi_heads.box_predictor.cls_score.weight"][0], cls[K])  # background
    assert torch.equal(tv["roi_heads.box_predictor.cls_score.weight"][1:], cls[:K])
    bb = tv["roi_heads.box_predictor.bbox_pred.weight"]
    assert bb.shape[0] == 4 * (K + 1) and not bb[:4].any()
    assert torch.equal(bb[4:], sd["roi_heads.box_predictor.bbox_pred.weight"])
    mk = tv["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert mk.shape[0] == K + 1 and not mk[0].any()
    assert torch.equal(mk[1:], sd["roi_heads.mask_head.predictor.weight"])
    assert torch.equal(tv["backbone.body.conv1.weight"], sd["backbone.bottom_up.stem.conv1.weight"].flip(1))


def test_unknown_keys_reported_and_bad_class_count_rejected():
    _, sd = d2_random_state_dict(3)
    sd["roi_heads.keypoint_head.conv_fcn1.weight"] = torch.zeros(1)
    sd["pixel_mean"] = torch.tensor([[[100.0]], [[110.0]], [[120.0]]])
    sd["pixel_std"] = torch.tensor([[[2.0]], [[2.0]], [[4.0]]])
    _, rep = d2k.convert(sd, num_classes=K)
    assert "roi_heads.keypoint_head.conv_fcn1.weight" in rep.skipped
    assert rep.input_mean == pytest.approx([120 / 255, 110 / 255, 100 / 255])
    assert rep.input_std == pytest.approx([4 / 255, 2 / 255, 2 / 255])
    with pytest.raises(ValueError, match="3 classes"):
        d2k.convert(sd, num_classes=5)
    # class-agnostic box regression / mask are repeated per class
    sd2 = dict(sd)
    sd2["roi_heads.box_predictor.bbox_pred.weight"] = torch.randn(4, 1024)
    sd2["roi_heads.box_predictor.bbox_pred.bias"] = torch.randn(4)
    sd2["roi_heads.mask_head.predictor.weight"] = torch.randn(1, 256, 1, 1)
    sd2["roi_heads.mask_head.predictor.bias"] = torch.randn(1)
    tv, _ = d2k.convert(sd2, num_classes=K)
    assert tv["roi_heads.box_predictor.bbox_pred.weight"].shape == (16, 1024)
    assert torch.equal(tv["roi_heads.box_predictor.bbox_pred.weight"][4:8],
                       tv["roi_heads.box_predictor.bbox_pred.weight"][12:16])
    assert tv["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape == (4, 256, 1, 1)


# ---------------------------------------------------------------------------------------------
# detectron2, re-implemented in plain functional torch (the "native" side)


def _bn(x, sd, p, eps=1e-5):  # detectron2 FrozenBatchNorm2d
    scale = sd[p + ".weight"] * (sd[p + ".running_var"] + eps).rsqrt()
    shift = sd[p + ".bias"] - sd[p + ".running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _conv(x, sd, p, stride=1, padding=0, norm=True):
    x = F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), stride, padding)
    return _bn(x, sd, p + ".norm") if norm else x


def d2_resnet(x, sd, stride_in_1x1=True):
    x = F.relu(_conv(x, sd, "backbone.bottom_up.stem.conv1", 2, 3))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = {}
    for s, n in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for b in range(n):
            p = f"backbone.bottom_up.res{s}.{b}"
            stride = 2 if (b == 0 and s > 2) else 1
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            short = _conv(x, sd, p + ".shortcut", stride) if p + ".shortcut.weight" in sd else x
            y = F.relu(_conv(x, sd, p + ".conv1", s1))
            y = F.relu(_conv(y, sd, p + ".conv2", s3, 1))
            y = _conv(y, sd, p + ".conv3")
            x = F.relu(y + short)
        outs[f"res{s}"] = x
    return outs


def d2_fpn(feats, sd):
    prev = _conv(feats["res5"], sd, "backbone.fpn_lateral5", norm=False)
    outs = [_conv(prev, sd, "backbone.fpn_output5", padding=1, norm=False)]
    for k in (4, 3, 2):
        top = F.interpolate(prev, scale_factor=2.0, mode="nearest")
        prev = _conv(feats[f"res{k}"], sd, f"backbone.fpn_lateral{k}", norm=False) + top
        outs.insert(0, _conv(prev, sd, f"backbone.fpn_output{k}", padding=1, norm=False))
    outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))  # LastLevelMaxPool
    return outs  # p2..p6


def d2_rpn_head(feats, sd):
    obj, deltas = [], []
    for f in feats:
        t = F.relu(_conv(f, sd, "proposal_generator.rpn_head.conv", padding=1, norm=False))
        obj.append(_conv(t, sd, "proposal_generator.rpn_head.objectness_logits", norm=False))
        deltas.append(_conv(t, sd, "proposal_generator.rpn_head.anchor_deltas", norm=False))
    return obj, deltas


def d2_roi_pool(p2_p5, boxes, size):  # ROIPooler(ROIAlignV2), canonical 224 / level 4
    from torchvision.ops import roi_align

    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lvl = torch.floor(4 + torch.log2(area.sqrt() / 224 + 1e-8)).clamp(2, 5).long() - 2
    out = torch.zeros(len(boxes), p2_p5[0].shape[1], size, size)
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    for i, f in enumerate(p2_p5):
        idx = torch.where(lvl == i)[0]
        if len(idx):
            out[idx] = roi_align(f, rois[idx], (size, size), 1.0 / 2 ** (i + 2), 0, aligned=True)
    return out


def d2_box_head(x, sd):
    x = F.relu(F.linear(x.flatten(1), sd["roi_heads.box_head.fc1.weight"], sd["roi_heads.box_head.fc1.bias"]))
    x = F.relu(F.linear(x, sd["roi_heads.box_head.fc2.weight"], sd["roi_heads.box_head.fc2.bias"]))
    scores = F.linear(x, sd["roi_heads.box_predictor.cls_score.weight"], sd["roi_heads.box_predictor.cls_score.bias"])
    deltas = F.linear(x, sd["roi_heads.box_predictor.bbox_pred.weight"], sd["roi_heads.box_predictor.bbox_pred.bias"])
    return scores, deltas


def d2_mask_head(x, sd):
    for i in range(1, 5):
        x = F.relu(_conv(x, sd, f"roi_heads.mask_head.mask_fcn{i}", padding=1, norm=False))
    x = F.relu(F.conv_transpose2d(x, sd["roi_heads.mask_head.deconv.weight"],
                                  sd["roi_heads.mask_head.deconv.bias"], stride=2))
    return _conv(x, sd, "roi_heads.mask_head.predictor", norm=False)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def both_sides(d2_sd):
    """Converted torchvision net + the detectron2 reference on one random RGB image."""
    tv_sd, rep = d2k.convert(d2_sd, num_classes=K, with_bn_counters=False)
    net = build("frozen_bn", True, rep.input_mean, rep.input_std)
    net.load_state_dict(tv_sd, strict=True)
    g = torch.Generator().manual_seed(5)
    rgb01 = torch.rand(3, 128, 160, generator=g)
    mean = torch.tensor(d2k.D2_DEFAULT_PIXEL_MEAN)[:, None, None]
    std = torch.tensor(d2k.D2_DEFAULT_PIXEL_STD)[:, None, None]
    d2_input = ((rgb01.flip(0) * 255.0 - mean) / std)[None]          # detectron2: BGR 0-255
    with torch.no_grad():
        tv_input = net.transform.normalize(rgb01)[None]               # torchvision: RGB 0-1
        body = net.backbone.body(tv_input)
        tv_feats = list(net.backbone.fpn(body).values())
        ref_res = d2_resnet(d2_input, d2_sd)
        ref_feats = d2_fpn(ref_res, d2_sd)
    return net, d2_sd, body, ref_res, tv_feats, ref_feats


@stand_in
def test_backbone_and_fpn_agree(both_sides):
    net, sd, body, ref_res, tv_feats, ref_feats = both_sides
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        assert rel_err(body[str(i)], ref_res[name]) < 1e-4, name
    assert len(tv_feats) == len(ref_feats) == 5
    for a, b in zip(tv_feats, ref_feats):
        assert a.shape == b.shape and rel_err(a, b) < 1e-4


@stand_in
def test_stride_placement_matters(d2_sd):
    """Without stride_in_1x1 the same weights compute a different function (documented)."""
    tv_sd, rep = d2k.convert(d2_sd, num_classes=K, with_bn_counters=False)
    net = build("frozen_bn", False, rep.input_mean, rep.input_std)
    net.load_state_dict(tv_sd, strict=True)
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(6))
    d2_input = (x.flip(0) * 255.0 - torch.tensor(d2k.D2_DEFAULT_PIXEL_MEAN)[:, None, None])[None]
    with torch.no_grad():
        a = net.backbone.body(net.transform.normalize(x)[None])["1"]
        b = d2_resnet(d2_input, d2_sd, stride_in_1x1=True)["res3"]
        c = d2_resnet(d2_input, d2_sd, stride_in_1x1=False)["res3"]
    assert rel_err(a, c) < 1e-4   # torchvision layout = detectron2 with STRIDE_IN_1X1 False
    assert rel_err(a, b) > 1e-2


@stand_in
def test_rpn_pooler_box_and_mask_heads_agree(both_sides):
    net, sd, _, _, tv_feats, ref_feats = both_sides
    with torch.no_grad():
        obj, deltas = net.rpn.head(tv_feats)
        r_obj, r_deltas = d2_rpn_head(ref_feats, sd)
        for a, b in zip(obj + deltas, r_obj + r_deltas):
            assert rel_err(a, b) < 1e-4
        g = torch.Generator().manual_seed(7)
        xy = torch.rand(40, 2, generator=g) * torch.tensor([120.0, 90.0])
        wh = torch.rand(40, 2, generator=g) * 60 + 4
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([160.0, 128.0]))], 1)
        feats = {str(i): f for i, f in enumerate(tv_feats[:4])}
        pooled = net.roi_heads.box_roi_pool(feats, [boxes], [(128, 160)])
        r_pooled = d2_roi_pool(ref_feats[:4], boxes, 7)
        assert rel_err(pooled, r_pooled) < 1e-4
        cls, reg = net.roi_heads.box_predictor(net.roi_heads.box_head(pooled))
        r_cls, r_reg = d2_box_head(r_pooled, sd)
        assert rel_err(cls[:, 0], r_cls[:, K]) < 1e-4 and rel_err(cls[:, 1:], r_cls[:, :K]) < 1e-4
        assert torch.allclose(cls.softmax(1)[:, 1:], r_cls.softmax(1)[:, :K], atol=1e-3)
        assert rel_err(reg[:, 4:], r_reg) < 1e-4
        pooled14 = net.roi_heads.mask_roi_pool(feats, [boxes], [(128, 160)])
        r_pooled14 = d2_roi_pool(ref_feats[:4], boxes, 14)
        assert rel_err(pooled14, r_pooled14) < 1e-4
        m = net.roi_heads.mask_predictor(net.roi_heads.mask_head(pooled14))
        r_m = d2_mask_head(r_pooled14, sd)
        assert m.shape == (40, K + 1, 28, 28) and rel_err(m[:, 1:], r_m) < 1e-4


def test_import_cli_writes_a_predicting_model_folder(tmp_path, d2_sd):
    from kit.models import load_model

    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": d2_sd, "iteration": 1}, ckpt)
    cfg = tmp_path / "small.yaml"
    cfg.write_text("model:\n  test_min_size: 96\n  test_max_size: 128\n  box_detections_per_img: 50\n")
    assert import_detectron2.main([str(ckpt), "--out", str(tmp_path / "m"), "--config", str(cfg)]) == 0
    model = load_model(tmp_path / "m")
    assert model.config.model.stride_in_1x1 and model.config.model.norm == "frozen_bn"
    assert model.config.model.image_mean == pytest.approx((123.675 / 255, 116.28 / 255, 103.53 / 255))
    labels = model.predict(np.full((96, 120), 128, np.uint8), "cort")
    assert labels.shape == (96, 120) and labels.dtype == np.int32
