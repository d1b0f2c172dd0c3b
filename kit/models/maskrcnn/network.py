"""The network: torchvision's ``MaskRCNN`` built from a :class:`ModelConfig` (backbone depth
and norm, anchors, ROIAlignV2 pooling, the kit's ROI heads and transform)."""
from __future__ import annotations

import math

from kit.models.maskrcnn.config import ModelConfig


def _make_pooler(names, output_size, sampling_ratio, aligned):
    """detectron2's ROIPooler (ROIAlignV2 when ``aligned``) as a torchvision MultiScaleRoIAlign."""
    import torch
    from torchvision.ops import MultiScaleRoIAlign, roi_align
    from torchvision.ops.poolers import LevelMapper

    class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
        """MultiScaleRoIAlign with ``aligned`` selectable (torchvision hard-codes False).

        Level of a box = floor(4 + log2(sqrt(area) / 224)), clamped to the levels present
        (torchvision's LevelMapper = detectron2's assign_boxes_to_levels up to its 1e-8/1e-6).
        """

        def __init__(self, *a, aligned: bool = True, **kw):
            super().__init__(*a, **kw)
            self.aligned = aligned

        def forward(self, x, boxes, image_shapes):
            feats = [v for k, v in x.items() if k in self.featmap_names]
            if self.scales is None or self.map_levels is None:
                # torchvision's rule: scale of a level = 2^round(log2(feature h / image h))
                max_h = max(int(s[0]) for s in image_shapes)
                self.scales = [2.0 ** round(math.log2(f.shape[-2] / max_h)) for f in feats]
                self.map_levels = LevelMapper(int(-math.log2(self.scales[0])),
                                              int(-math.log2(self.scales[-1])),
                                              self.canonical_scale, self.canonical_level)
            rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                              for i, b in enumerate(boxes)], dim=0)
            n, c = rois.shape[0], feats[0].shape[1]
            out = feats[0].new_zeros((n, c) + tuple(self.output_size))
            if n == 0:
                return out
            levels = (self.map_levels(boxes) if len(feats) > 1
                      else torch.zeros(n, dtype=torch.int64, device=rois.device))
            for lvl, (feat, scale) in enumerate(zip(feats, self.scales)):
                idx = torch.where(levels == lvl)[0]
                if idx.numel():
                    out[idx] = roi_align(feat, rois[idx], output_size=self.output_size,
                                         spatial_scale=scale, sampling_ratio=self.sampling_ratio,
                                         aligned=self.aligned).to(out.dtype)
            return out

    return AlignedMultiScaleRoIAlign(featmap_names=names, output_size=output_size,
                                     sampling_ratio=sampling_ratio, aligned=aligned)


def _make_transform(mcfg: ModelConfig):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class KitTransform(GeneralizedRCNNTransform):
        """Normalise always; resize only in eval mode (the data loader scales training images)."""

        def resize(self, image, target=None):
            if self.training:
                return image, target
            return super().resize(image, target)

    return KitTransform(min_size=mcfg.test_min_size, max_size=mcfg.test_max_size,
                        image_mean=list(mcfg.image_mean), image_std=list(mcfg.image_std))


def crop_mask_targets(targets, proposals, matched_idxs, size: int):
    """(P, size, size) float 0/1 mask targets of the positive ``proposals`` of every image.

    ``targets[i]["masks"]``: (G, hc, wc) uint8 instance crops, zero-padded by >= 1 px;
    ``targets[i]["mask_origin"]``: (G, 2) float, (x, y) of crop pixel (0, 0) in the
    *unscaled* image; ``targets[i]["mask_scale"]``: (2,) float (sx, sy), network pixels per
    unscaled pixel. The proposal box is mapped back to the unscaled image and ROIAligned
    (``aligned=True``) from its ground truth's crop, thresholded at 0.5 (detectron2's
    ``BitMasks.crop_and_resize``). Same numbers as ROIAligning the full-image mask, as the
    crop's zero border reproduces the zeros around it; memory O(P * crop size).
    """
    import torch
    from torchvision.ops import roi_align

    out = []
    for t, props, idx in zip(targets, proposals, matched_idxs):
        if props.shape[0] == 0:
            continue
        crops = t["masks"][idx][:, None].to(props.dtype)
        sx, sy = t["mask_scale"].to(props)
        origin = t["mask_origin"][idx].to(props)
        b = props / torch.stack([sx, sy, sx, sy]) - origin.repeat(1, 2)
        rois = torch.cat([torch.arange(len(b), device=b.device, dtype=b.dtype)[:, None], b], 1)
        out.append(roi_align(crops, rois, (size, size), 1.0, 0, True)[:, 0] >= 0.5)
    if not out:
        return torch.zeros((0, size, size))
    return torch.cat(out).float()


def _make_roi_heads(src, mcfg: ModelConfig):
    """Our RoIHeads (see module doc) holding ``src``'s modules and settings."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

    class KitRoIHeads(RoIHeads):
        def forward(self, features, proposals, image_shapes, targets=None):
            if not self.training:
                return self.detect(features, proposals, image_shapes), {}
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets)
            x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
            class_logits, box_regression = self.box_predictor(x)
            loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            pos_props, pos_idx, pos_labels = [], [], []
            for p, m, lab in zip(proposals, matched_idxs, labels):
                pos = torch.where(lab > 0)[0]
                pos_props.append(p[pos])
                pos_idx.append(m[pos])
                pos_labels.append(lab[pos])
            n_pos = sum(len(p) for p in pos_props)
            if n_pos == 0:
                # keep the mask branch in the graph so DDP/AMP see every parameter used
                loss_mask = sum(p.sum() for p in self.mask_predictor.parameters()) * 0.0
            else:
                mf = self.mask_head(self.mask_roi_pool(features, pos_props, image_shapes))
                logits = self.mask_predictor(mf)
                lab = torch.cat(pos_labels)
                logits = logits[torch.arange(len(lab), device=lab.device), lab]
                tgt = crop_mask_targets(targets, pos_props, pos_idx, logits.shape[-1]).to(logits)
                loss_mask = F.binary_cross_entropy_with_logits(logits, tgt)
            return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}

        def detect(self, features, proposals, image_shapes):
            """Per image ``{"boxes", "scores", "labels"}`` (network input coordinates)."""
            x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
            class_logits, box_regression = self.box_predictor(x)
            boxes, scores, labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes)
            return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, scores, labels)]

        def mask_probs(self, features, boxes, labels, image_shapes, chunk: int = 200):
            """(N, M, M) sigmoid mask probabilities of one image's ``boxes`` for ``labels``."""
            out = []
            for i in range(0, len(boxes), chunk):
                b, lab = boxes[i:i + chunk], labels[i:i + chunk]
                logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, [b], image_shapes)))
                out.append(logits[torch.arange(len(lab), device=lab.device), lab].sigmoid())
            if not out:
                m = self.mask_roi_pool.output_size[0] * 2
                return torch.zeros((0, m, m), device=boxes.device)
            return torch.cat(out)

    heads = KitRoIHeads(
        src.box_roi_pool, src.box_head, src.box_predictor,
        fg_iou_thresh=0.5, bg_iou_thresh=0.5,
        batch_size_per_image=mcfg.box_batch_size_per_image,
        positive_fraction=mcfg.box_positive_fraction,
        bbox_reg_weights=None,  # (10, 10, 5, 5) = detectron2's ROI_BOX_HEAD.BBOX_REG_WEIGHTS
        score_thresh=mcfg.box_score_thresh, nms_thresh=mcfg.box_nms_thresh,
        detections_per_img=mcfg.box_detections_per_img,
        mask_roi_pool=src.mask_roi_pool, mask_head=src.mask_head, mask_predictor=src.mask_predictor)
    return heads


def _norm_layer(norm: str):
    import torch.nn as nn
    from torchvision.ops import misc

    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return misc.FrozenBatchNorm2d
    return lambda c: nn.GroupNorm(32, c)


def apply_stride_in_1x1(body) -> None:
    """Move the stride of each stage's first bottleneck from conv2 (3x3) to conv1 (1x1).

    detectron2's MSRA ResNets (``RESNETS.STRIDE_IN_1X1: True``, the model zoo's R-50.pkl and
    every R50-FPN trained from it) stride in the 1x1 conv; torchvision's ResNet (v1.5) in the
    3x3 conv. Same parameter shapes, different outputs: with the stride moved the torchvision
    body computes exactly detectron2's function.
    """
    for name in ("layer2", "layer3", "layer4"):
        blk = getattr(body, name)[0]
        blk.conv1.stride, blk.conv2.stride = blk.conv2.stride, (1, 1)


def _make_anchor_generator(mcfg: ModelConfig):
    """One anchor size per FPN level P2-P6 x ``aspect_ratios``, by ``mcfg.anchor_rule``:
    ``torchvision`` (its ``AnchorGenerator``: corners rounded to integers, a level's stride =
    padded image size // feature size, e.g. 544 // 9 = 60 instead of 64 on P6 of a 520-px image)
    or ``detectron2`` (its ``DefaultAnchorGenerator``: corners as computed, strides 4, 8, 16, 32,
    64)."""
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    class Detectron2Anchors(AnchorGenerator):
        """detectron2's anchors (offset 0) in torchvision's order and interface."""

        def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32,
                             device=torch.device("cpu")):
            scales = torch.as_tensor(scales, dtype=dtype, device=device)
            ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
            h_ratios = torch.sqrt(ratios)
            ws = ((1 / h_ratios)[:, None] * scales[None, :]).view(-1)
            hs = (h_ratios[:, None] * scales[None, :]).view(-1)
            return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

        def forward(self, image_list, feature_maps):
            grid_sizes = [f.shape[-2:] for f in feature_maps]
            dtype, device = feature_maps[0].dtype, feature_maps[0].device
            strides = [[torch.tensor(4 * 2 ** k, device=device)] * 2 for k in range(len(grid_sizes))]
            self.set_cell_anchors(dtype, device)
            per_level = self.grid_anchors(grid_sizes, strides)
            return [torch.cat(per_level) for _ in image_list.image_sizes]

    kind = Detectron2Anchors if mcfg.anchor_rule == "detectron2" else AnchorGenerator
    return kind(sizes=tuple((s,) for s in mcfg.anchor_sizes),
                aspect_ratios=(tuple(mcfg.aspect_ratios),) * len(mcfg.anchor_sizes))


def _narrow_fpn(backbone, channels: int, num_classes: int) -> dict:
    """Give ``backbone`` an FPN of ``channels`` per level (torchvision's is 256) and return the
    MaskRCNN keyword arguments of a mask head as wide (four 3x3 convs of ``channels``, then the
    2x deconvolution) and of the box predictor it then needs too (on torchvision's 1024-wide
    box head); ``{"num_classes": n}`` for 256, torchvision's own heads. The FPN's 3x3
    convolutions on the stride-4 level and the mask head's on every positive ROI are most of a
    CPU step, and both scale with ``channels`` squared."""
    if channels == 256:
        return {"num_classes": num_classes}
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    fpn = backbone.fpn
    in_channels = [block[0].in_channels for block in fpn.inner_blocks]
    backbone.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelMaxPool())
    backbone.out_channels = channels
    return {"num_classes": None, "box_predictor": FastRCNNPredictor(1024, num_classes),
            "mask_head": MaskRCNNHeads(channels, (channels,) * 4, 1),
            "mask_predictor": MaskRCNNPredictor(channels, channels, num_classes)}


def build_network(mcfg: ModelConfig):
    """torchvision ``MaskRCNN`` from ``mcfg`` (random init; no weights are ever downloaded)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name=f"resnet{mcfg.backbone_depth}", weights=None,
                                   norm_layer=_norm_layer(mcfg.norm),
                                   trainable_layers=mcfg.trainable_backbone_layers)
    if mcfg.stride_in_1x1:
        apply_stride_in_1x1(backbone.body)
    heads = _narrow_fpn(backbone, mcfg.fpn_channels, len(mcfg.classes) + 1)
    anchors = _make_anchor_generator(mcfg)
    names = ["0", "1", "2", "3"]
    net = MaskRCNN(
        backbone,
        min_size=mcfg.test_min_size, max_size=mcfg.test_max_size,
        image_mean=list(mcfg.image_mean), image_std=list(mcfg.image_std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=mcfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=mcfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=mcfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=mcfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=mcfg.rpn_nms_thresh,
        rpn_batch_size_per_image=mcfg.rpn_batch_size_per_image,
        box_roi_pool=_make_pooler(names, 7, mcfg.roi_sampling_ratio, mcfg.roi_align_aligned),
        mask_roi_pool=_make_pooler(names, mcfg.mask_pool_size, mcfg.roi_sampling_ratio,
                                   mcfg.roi_align_aligned),
        box_score_thresh=mcfg.box_score_thresh, box_nms_thresh=mcfg.box_nms_thresh,
        box_detections_per_img=mcfg.box_detections_per_img,
        box_batch_size_per_image=mcfg.box_batch_size_per_image,
        box_positive_fraction=mcfg.box_positive_fraction, **heads)
    net.transform = _make_transform(mcfg)
    net.roi_heads = _make_roi_heads(net.roi_heads, mcfg)
    # detectron2's initialisation of the predictors (torchvision's Kaiming init of the mask
    # logits layer starts the mask loss near 10 instead of log 2): N(0, .01) class scores,
    # N(0, .001) box deltas and mask logits, zero biases.
    import torch.nn as nn

    rh = net.roi_heads
    for layer, std in ((rh.box_predictor.cls_score, 0.01), (rh.box_predictor.bbox_pred, 0.001),
                       (rh.mask_predictor.mask_fcn_logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    return net
