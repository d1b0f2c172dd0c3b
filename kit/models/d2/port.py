"""A detectron2 model as the kit's torchvision Mask R-CNN: the same weights (through
:mod:`kit.models.maskrcnn.detectron2_keys`) and the settings its detectron2 config names, so a
model trained by detectron2 can be served where detectron2 is not installed.

What carries over exactly, and what not, is stated in ``detectron2_keys``'s docstring (anchor
corners: torchvision rounds them) and measured against detectron2 itself by
``tests/test_detectron2_port.py`` and ``python -m benchmarks.detectron2_port``.
"""
from __future__ import annotations

__all__ = ["torchvision_config", "torchvision_port", "PortError"]


class PortError(ValueError):
    """The detectron2 config asks for something the torchvision network does not have."""


def _require(cfg, key: str, want) -> None:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    got = list(node) if isinstance(node, (list, tuple)) else node
    if got != want:
        raise PortError(f"{key} = {got!r}: the torchvision port supports {want!r} only")


def torchvision_config(model, anchor_rule: str = "detectron2"):
    """The :class:`kit.models.maskrcnn.MaskRCNNConfig` computing what the detectron2 model
    ``model`` (:class:`kit.models.d2.model.Detectron2Model`) computes at test time;
    :class:`PortError` naming the detectron2 key it cannot follow. ``anchor_rule``
    ``torchvision`` swaps in torchvision's own anchors (to measure what they change)."""
    from kit.models.maskrcnn.config import MaskRCNNConfig, ModelConfig
    from kit.models.maskrcnn.detectron2_keys import input_normalisation

    cfg = model.cfg
    for key, want in (("MODEL.META_ARCHITECTURE", "GeneralizedRCNN"),
                      ("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"),
                      ("MODEL.RESNETS.NUM_GROUPS", 1), ("MODEL.RESNETS.WIDTH_PER_GROUP", 64),
                      ("MODEL.RESNETS.RES5_DILATION", 1),
                      ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False] * 4),
                      ("MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]),
                      ("MODEL.FPN.NORM", ""), ("MODEL.FPN.FUSE_TYPE", "sum"),
                      ("MODEL.ANCHOR_GENERATOR.OFFSET", 0.0),
                      ("MODEL.RPN.BBOX_REG_WEIGHTS", [1.0, 1.0, 1.0, 1.0]),
                      ("MODEL.ROI_HEADS.NAME", "StandardROIHeads"),
                      ("MODEL.ROI_BOX_HEAD.NUM_FC", 2), ("MODEL.ROI_BOX_HEAD.NUM_CONV", 0),
                      ("MODEL.ROI_BOX_HEAD.FC_DIM", 1024),
                      ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7),
                      ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", [10.0, 10.0, 5.0, 5.0]),
                      ("MODEL.ROI_MASK_HEAD.NUM_CONV", 4), ("MODEL.ROI_MASK_HEAD.CONV_DIM", 256),
                      ("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", 14),
                      ("MODEL.ROI_MASK_HEAD.NORM", "")):
        _require(cfg, key, want)
    pooler = cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE
    if pooler not in ("ROIAlignV2", "ROIAlign") or cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE != pooler:
        raise PortError(f"MODEL.ROI_*_HEAD.POOLER_TYPE = {pooler!r}: the port supports ROIAlignV2 "
                        "or ROIAlign, the same for the box and mask heads")
    sizes = [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    ratios = [list(r) for r in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS]
    if any(len(s) != 1 for s in sizes) or len(ratios) != 1:
        raise PortError(f"MODEL.ANCHOR_GENERATOR: one size per level and one list of aspect ratios "
                        f"only, got SIZES {sizes}, ASPECT_RATIOS {ratios}")
    depth = int(cfg.MODEL.RESNETS.DEPTH)
    mean, std = input_normalisation(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    if cfg.INPUT.FORMAT != "BGR":
        raise PortError(f"INPUT.FORMAT = {cfg.INPUT.FORMAT!r}: the port reads BGR models only")
    mcfg = ModelConfig(
        classes=tuple(model.config.classes), backbone_depth=depth, norm="frozen_bn",
        trainable_backbone_layers=0, stride_in_1x1=bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1) and depth >= 50,
        anchor_sizes=tuple(int(s[0]) for s in sizes), aspect_ratios=tuple(float(r) for r in ratios[0]),
        anchor_rule=anchor_rule,
        rpn_pre_nms_top_n_test=int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST),
        rpn_post_nms_top_n_test=int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
        rpn_nms_thresh=float(cfg.MODEL.RPN.NMS_THRESH),
        box_score_thresh=float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
        box_nms_thresh=float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
        box_detections_per_img=int(cfg.TEST.DETECTIONS_PER_IMAGE),
        roi_align_aligned=pooler == "ROIAlignV2",
        roi_sampling_ratio=int(cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO),
        test_min_size=int(cfg.INPUT.MIN_SIZE_TEST), test_max_size=int(cfg.INPUT.MAX_SIZE_TEST),
        image_mean=tuple(mean), image_std=tuple(std))
    return MaskRCNNConfig(model=mcfg, postprocess=model.config.postprocess,
                          cell_type=model.config.cell_type)


def torchvision_port(model, device: str = "cpu", anchor_rule: str = "detectron2"):
    """A :class:`kit.models.maskrcnn.MaskRCNNModel` with ``model``'s weights and settings
    (``anchor_rule``: as :func:`torchvision_config`)."""
    from kit.models.maskrcnn.detectron2_keys import convert
    from kit.models.maskrcnn.model import MaskRCNNModel
    from kit.models.maskrcnn.network import build_network

    config = torchvision_config(model, anchor_rule)
    state, _ = convert(model.net.state_dict(), len(model.config.classes), with_bn_counters=False,
                       pixel_mean=list(model.cfg.MODEL.PIXEL_MEAN),
                       pixel_std=list(model.cfg.MODEL.PIXEL_STD))
    net = build_network(config.model)
    net.load_state_dict(state)
    return MaskRCNNModel(config, net, device, extra={"ported_from": "detectron2"})
