"""detectron2 itself against the kit's torchvision port of its weights (kit.models.d2.port,
kit.models.maskrcnn.detectron2_keys), on real Sartorius images, stage by stage.

The same detectron2 weights (R50-FPN, the kit's detectron2.yaml at native test size, 3 classes;
random init with BatchNorm statistics of the real image and random affine parameters, so no
layer is an identity) run in detectron2 and in the port:

* input normalisation, backbone + FPN features P2-P6, RPN head logits and deltas, the box head
  on detectron2's own proposals, the mask head on detectron2's own boxes: equal to 1e-4 of each
  tensor's largest magnitude (measured: 1e-7 for the input, 1e-5 to 5e-5 for the rest: float32
  rounding of the same arithmetic in a different order);
* anchors: the port's ``anchor_rule: detectron2`` reproduces detectron2's (< 1e-3 px);
  torchvision's own rule differs by design (corners rounded; P6's stride 544 // 9 = 60 px
  instead of 64, over 30 px off at the bottom of a 520-px image);
* proposals (the same 1000 boxes, IoU > 0.999) and final detections (the same boxes and scores),
  then both painted by kit.postprocess and scored against each other with the metric (1.000).

Needs detectron2 (``make detectron2``) and ../shared/data; skips otherwise.
"""
import numpy as np
import pytest

from tests.conftest import REAL_SARTORIUS, needs_real_data

pytestmark = [needs_real_data, pytest.mark.usefixtures("torch_one_thread")]
REL = 1e-4
IMAGES = ("0030fd0e6378",)   # shsy5y, 395 cells


def _close(a, b, what: str) -> float:
    a, b = a.detach().float(), b.detach().float()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float((a - b).abs().max() / max(float(a.abs().max()), 1e-12))
    assert err < REL, f"{what}: max |difference| / max |value| = {err:.2e}"
    print(f"{what}: relative difference {err:.1e}")
    return err


@pytest.fixture(scope="module")
def engines():
    """(detectron2 model, its torchvision port, the port with torchvision's own anchors) of the
    same random weights."""
    pytest.importorskip("detectron2")
    import dataclasses

    import torch

    from kit.data import load_image
    from kit.models.d2.config import build_cfg, load_config
    from kit.models.d2.model import Detectron2Model
    from kit.models.d2.port import torchvision_port

    torch.manual_seed(0)
    config = load_config()
    config = dataclasses.replace(config, detectron2={**config.detectron2,
                                                     "INPUT.MIN_SIZE_TEST": 520,
                                                     "INPUT.MAX_SIZE_TEST": 704})
    d2 = Detectron2Model(config, build_cfg(config))
    # BatchNorm statistics of real images (a random net's identity BN lets activations blow
    # up to degenerate boxes), and random affine parameters: no layer is an identity

    g = torch.Generator().manual_seed(1)
    bns = [m for m in d2.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None                  # cumulative average
            bn.weight.copy_(1 + 0.2 * torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=g))
        d2.net.backbone.train()
        for image_id in IMAGES:
            d2_images, _ = _inputs(d2, None, load_image(REAL_SARTORIUS / "train" / f"{image_id}.png"))
            d2.net.backbone(d2_images.tensor)
        d2.net.eval()
    return d2, torchvision_port(d2), torchvision_port(d2, anchor_rule="torchvision")


def _inputs(d2, tv, image):
    import torch

    from kit.models.d2.model import to_bgr

    bgr = torch.as_tensor(to_bgr(image).transpose(2, 0, 1).copy(), dtype=torch.float32)
    d2_images = d2.net.preprocess_image([{"image": bgr}])
    if tv is None:
        return d2_images, None
    x = torch.from_numpy(image).float().div(255.0)[None].expand(3, -1, -1)
    tv_images, _ = tv.net.transform([x])
    return d2_images, tv_images


@pytest.mark.parametrize("image_id", IMAGES)
def test_stages_agree(engines, image_id):
    import torch

    from kit.data import load_image

    d2, tv, tv_torchvision_anchors = engines
    image = load_image(REAL_SARTORIUS / "train" / f"{image_id}.png")
    with torch.inference_mode():
        d2_images, tv_images = _inputs(d2, tv, image)
        # input: detectron2 BGR 0-255 minus PIXEL_MEAN; the port RGB 0-1 with the converted mean
        _close(d2_images.tensor, tv_images.tensors.flip(1), "normalised input")
        d2_feats = d2.net.backbone(d2_images.tensor)
        tv_feats = tv.net.backbone(tv_images.tensors)
        for d2_name, tv_name in zip(("p2", "p3", "p4", "p5", "p6"), ("0", "1", "2", "3", "pool")):
            _close(d2_feats[d2_name], tv_feats[tv_name], f"FPN {d2_name}")

        # RPN head: objectness logits and anchor deltas per level
        levels = [d2_feats[f] for f in d2.net.proposal_generator.in_features]
        d2_logits, d2_deltas = d2.net.proposal_generator.rpn_head(levels)
        tv_logits, tv_deltas = tv.net.rpn.head(list(tv_feats.values()))
        for k, (a, b) in enumerate(zip(d2_logits, tv_logits)):
            _close(a, b, f"RPN logits level {k}")
        for k, (a, b) in enumerate(zip(d2_deltas, tv_deltas)):
            _close(a, b, f"RPN deltas level {k}")

        # anchors: the port's detectron2 rule gives detectron2's; torchvision's own rounds the
        # corners and takes P6's stride as 544 // 9 = 60 px instead of 64
        d2_anchors = torch.cat([a.tensor for a in d2.net.proposal_generator.anchor_generator(levels)])
        tv_anchors = tv.net.rpn.anchor_generator(tv_images, list(tv_feats.values()))[0]
        assert float((d2_anchors - tv_anchors).abs().max()) < 1e-3
        own = tv_torchvision_anchors.net.rpn.anchor_generator(tv_images, list(tv_feats.values()))[0]
        assert float((d2_anchors - own).abs().max()) > 30    # P6, bottom rows

        # box head on detectron2's own proposals
        proposals, _ = d2.net.proposal_generator(d2_images, d2_feats)
        boxes = proposals[0].proposal_boxes.tensor
        heads = d2.net.roi_heads
        box_in = [d2_feats[f] for f in heads.box_in_features]
        d2_scores, d2_box_deltas = heads.box_predictor(heads.box_head(
            heads.box_pooler(box_in, [proposals[0].proposal_boxes])))
        tv_x = tv.net.roi_heads.box_head(tv.net.roi_heads.box_roi_pool(tv_feats, [boxes],
                                                                       tv_images.image_sizes))
        tv_scores, tv_box_deltas = tv.net.roi_heads.box_predictor(tv_x)
        k = d2_scores.shape[1] - 1
        _close(d2_scores, torch.cat([tv_scores[:, 1:], tv_scores[:, :1]], 1), "class logits")
        _close(d2_box_deltas, tv_box_deltas[:, 4:], "box deltas")

        # mask head on detectron2's final boxes
        instances, _ = heads(d2_images, d2_feats, proposals)
        inst = instances[0]
        assert len(inst) > 0
        mask_in = [d2_feats[f] for f in heads.mask_in_features]
        d2_mask_logits = heads.mask_head.layers(heads.mask_pooler(mask_in, [inst.pred_boxes]))
        tv_mask_logits = tv.net.roi_heads.mask_predictor(tv.net.roi_heads.mask_head(
            tv.net.roi_heads.mask_roi_pool(tv_feats, [inst.pred_boxes.tensor], tv_images.image_sizes)))
        _close(d2_mask_logits, tv_mask_logits[:, 1:k + 1], "mask logits")

        # proposals: the same boxes (up to the order of near-equal scores)
        from torchvision.ops import box_iou

        tv_props, _ = tv.net.rpn(tv_images, tv_feats)
        assert len(tv_props[0]) == len(boxes)
        iou = box_iou(boxes, tv_props[0]).max(1).values
        share = float((iou > 0.999).float().mean())
        print(f"proposals: {len(boxes)}, share with an IoU > 0.999 twin {share:.4f}")
        assert share >= 0.99, share


@pytest.mark.parametrize("image_id", IMAGES)
def test_final_detections_and_label_images_agree(engines, image_id):
    """End to end: detectron2's raw detections against the port's, then both painted by
    kit.postprocess and scored against each other (the port's labels vs detectron2's as truth)."""
    from torchvision.ops import box_iou
    import torch

    from kit import metric
    from kit.data import load_image
    from kit.postprocess import postprocess
    from kit.rle import encode_labels

    d2, tv, tv_torchvision_anchors = engines
    image = load_image(REAL_SARTORIUS / "train" / f"{image_id}.png")
    a, b = d2.predict_raw(image), tv.predict_raw(image)
    print(f"detections: detectron2 {len(a)}, port {len(b)}")
    assert len(a) > 0 and abs(len(a) - len(b)) <= max(2, 0.05 * len(a))
    iou = box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes))
    best, j = iou.max(1)
    matched = best > 0.9
    assert float(matched.float().mean()) >= 0.9
    np.testing.assert_allclose(a.scores[matched.numpy()], b.scores[j[matched].numpy()], atol=1e-3)
    la = postprocess(a, "shsy5y", d2.config.postprocess)
    lb = postprocess(b, "shsy5y", tv.config.postprocess)
    assert la.max() > 0
    score = metric.image_score(encode_labels(la), lb, la.shape).score
    print(f"matched boxes {float(matched.float().mean()):.3f}, label images: MAP of the port "
          f"against detectron2 {score:.3f} ({la.max()} / {lb.max()} cells)")
    assert score >= 0.9, score
