"""Mask R-CNN R50-FPN on torchvision, configured like the seed's detectron2 model.

One YAML config (:class:`MaskRCNNConfig`: ``model`` / ``train`` / ``postprocess`` sections;
defaults and where each number came from in ``kit/configs/maskrcnn.yaml``) builds the network
(:func:`build_network`): torchvision's ``MaskRCNN`` with

* a ResNet-{18,34,50,101} FPN backbone, norm ``bn`` (trainable, for random init: frozen BN can
  diverge to NaN from scratch: seen here in the first steps of random-init training), ``gn`` or ``frozen_bn`` (for pretrained weights),
  and ``stride_in_1x1`` (detectron2's MSRA ResNets put the stride of a stage's first block in
  the 1x1 conv, torchvision's in the 3x3 conv: same weight shapes, different function);
* anchors ``anchor_sizes`` (one size per FPN level P2-P6) x ``aspect_ratios``;
* ROIAlignV2 pooling (``roi_align_aligned``: detectron2's half-pixel-correct ROIAlign;
  torchvision's default is the legacy ``aligned=False``) with ``roi_sampling_ratio``;
* :class:`KitRoIHeads`: training computes mask targets from per-instance crops (never an
  ``N x H x W`` float tensor of all ground-truth masks); inference returns boxes, scores and
  labels only, and :meth:`KitRoIHeads.mask_probs` gives 28x28 probabilities for the boxes one
  asks for. torchvision's own inference pastes every detection into a full-size float mask
  (1000 x 520 x 704 x 4 B = 1.46 GB); this model never calls that path.
* :class:`KitTransform`: normalises; resizes at test time only (``test_min_size`` /
  ``test_max_size``); training images arrive already scaled and cropped by the data loader.

:class:`MaskRCNNModel` is the model folder (``model.json`` + ``model.pt``) with
``predict(image, cell_type)`` -> label image (:mod:`kit.postprocess`) and
``predict_raw(image)`` -> :class:`kit.postprocess.Detections` (boxes, scores, classes, 28x28
mask probabilities, in original-image coordinates) for tuning the post-processing without
the network.

Pretrained weights come only from a user-supplied file (:func:`load_pretrained`): a
torchvision Mask R-CNN checkpoint, a kit checkpoint (any class count: the class-specific head
tensors are re-initialised when the classes differ) or a detectron2 checkpoint (converted by
:mod:`kit.detectron2_keys`). Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from kit import CELL_TYPES
from kit.atomic import atomic_open
from kit.postprocess import Detections, PostprocessConfig, paint, select

__all__ = ["ModelConfig", "TrainConfig", "MaskRCNNConfig", "DEFAULT_CONFIG_FILE", "load_config",
           "build_network", "load_pretrained", "MaskRCNNModel"]

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "maskrcnn.yaml"
HEAD_KEYS = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
             "roi_heads.mask_predictor.mask_fcn_logits.")


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class ModelConfig:
    """Network settings; numbers and their sources in ``kit/configs/maskrcnn.yaml``."""

    classes: tuple[str, ...] = CELL_TYPES   # network class k + 1 = classes[k] (0 = background)
    backbone_depth: Literal[18, 34, 50, 101] = 50
    norm: Literal["bn", "gn", "frozen_bn"] = "bn"
    trainable_backbone_layers: int = 5
    stride_in_1x1: bool = False
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 1000
    roi_align_aligned: bool = True
    roi_sampling_ratio: int = 0
    train_min_sizes: tuple[int, ...] = (600, 640, 680, 720, 760, 800)
    train_max_size: int = 1333
    test_min_size: int = 800
    test_max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    mask_chunk: int = 200   # ROIs per mask-head forward at inference (bounds CPU memory)

    def __post_init__(self):
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and unique, got {list(self.classes)}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per FPN level P2-P6 (5), got "
                             f"{list(self.anchor_sizes)}")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"aspect_ratios must be positive, got {list(self.aspect_ratios)}")
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ValueError(f"trainable_backbone_layers must be in [0, 5], got "
                             f"{self.trainable_backbone_layers}")
        if self.stride_in_1x1 and self.backbone_depth < 50:
            raise ValueError("stride_in_1x1 applies to bottleneck ResNets (backbone_depth >= 50)")
        if not self.train_min_sizes or min(self.train_min_sizes) < 32:
            raise ValueError(f"train_min_sizes must be >= 32, got {list(self.train_min_sizes)}")
        for name in ("rpn_nms_thresh", "box_positive_fraction", "box_score_thresh", "box_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {list(self.image_std)}")


@dataclass(frozen=True)
class TrainConfig:
    """Training loop settings (:mod:`kit.models.maskrcnn_train`)."""

    epochs: int = 24
    livecell_epochs: int = 6
    livecell_labels: Literal["single", "cell_line"] = "cell_line"
    batch_size: int = 2
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    steps: tuple[float, ...] = (0.75, 0.9)  # "step": x0.1 at these fractions of the stage
    grad_clip: float = 10.0
    amp: bool = True                   # mixed precision, on CUDA only
    crop: int = 0                      # square random crop (network pixels); 0 = whole image
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    eval_every: int = 1                # epochs between held-out evaluations
    eval_max_images: int = 0           # 0 = the whole held-out fold
    max_iters_per_epoch: int = 0       # 0 = one pass over the images
    max_nonfinite: int = 20            # consecutive non-finite losses before giving up
    num_workers: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "livecell_epochs", "crop", "eval_max_images", "max_iters_per_epoch",
                     "num_workers", "warmup_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("batch_size", "eval_every", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.crop and self.crop < 32:
            raise ValueError(f"crop must be 0 or >= 32, got {self.crop!r}")


@dataclass(frozen=True)
class MaskRCNNConfig:
    """The whole config file. ``cell_type``: ``vote`` = the image's type is the majority class
    of the detections (the seed); ``given`` = the type passed to ``predict`` (true types in OOF,
    the ``celltype.joblib`` classifier in ``kit.predict``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    cell_type: Literal["vote", "given"] = "vote"


def load_config(path=None) -> MaskRCNNConfig:
    """The config in ``path`` (default: ``kit/configs/maskrcnn.yaml``); unknown keys are errors."""
    from kit import config as kconfig

    return kconfig.load(MaskRCNNConfig, DEFAULT_CONFIG_FILE if path is None else path)


# ---------------------------------------------------------------------------------------------
# Network pieces


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


def build_network(mcfg: ModelConfig):
    """torchvision ``MaskRCNN`` from ``mcfg`` (random init; no weights are ever downloaded)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name=f"resnet{mcfg.backbone_depth}", weights=None,
                                   norm_layer=_norm_layer(mcfg.norm),
                                   trainable_layers=mcfg.trainable_backbone_layers)
    if mcfg.stride_in_1x1:
        apply_stride_in_1x1(backbone.body)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in mcfg.anchor_sizes),
                              aspect_ratios=(tuple(mcfg.aspect_ratios),) * len(mcfg.anchor_sizes))
    names = ["0", "1", "2", "3"]
    net = MaskRCNN(
        backbone, num_classes=len(mcfg.classes) + 1,
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
        mask_roi_pool=_make_pooler(names, 14, mcfg.roi_sampling_ratio, mcfg.roi_align_aligned),
        box_score_thresh=mcfg.box_score_thresh, box_nms_thresh=mcfg.box_nms_thresh,
        box_detections_per_img=mcfg.box_detections_per_img,
        box_batch_size_per_image=mcfg.box_batch_size_per_image,
        box_positive_fraction=mcfg.box_positive_fraction)
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


# ---------------------------------------------------------------------------------------------
# Weights files


def read_weights_file(path) -> tuple[dict, str, dict]:
    """``(state_dict, kind, meta)`` of a user-supplied weights file (never downloads).

    kind: ``"detectron2"`` (keys ``backbone.bottom_up.*``; ``.pth`` or pickled ``.pkl`` with a
    ``"model"`` entry), ``"kit"`` (a kit ``model.pt`` / checkpoint; meta holds its ``classes``)
    or ``"torchvision"`` (a torchvision Mask R-CNN state dict, e.g. the COCO checkpoint).
    ``.pkl`` files are unpickled: only open files you trust.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    from kit.models import model_file

    with model_file(path, "weights file"):
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                obj = pickle.load(f, encoding="latin1")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    meta = {}
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        meta = {k: v for k, v in obj.items() if k in ("classes", "config", "stage")}
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a state dict (or a dict with a 'model' state dict)")
    from collections import OrderedDict

    sd = OrderedDict((k, v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)))
                     for k, v in obj.items() if not k.startswith("__"))
    if getattr(obj, "_metadata", None) is not None:
        sd._metadata = obj._metadata  # torchvision's version hooks rename pre-0.13 keys
    if any(k.startswith("backbone.bottom_up.") for k in sd):
        return sd, "detectron2", meta
    if "classes" in meta:
        return sd, "kit", meta
    return sd, "torchvision", meta


def load_pretrained(net, path, classes) -> dict:
    """Load a weights file into ``net`` (built for ``classes``); returns a report.

    Tensors whose shape differs from the network's (another class count) are skipped and stay
    randomly initialised; so are the class-specific head tensors (:data:`HEAD_KEYS`) of a kit
    checkpoint whose class names differ. detectron2 files are converted first
    (:func:`kit.detectron2_keys.convert`). Report: ``{"kind", "loaded", "skipped": {key:
    reason}, "missing": [...], "converted": {...}}``.
    """
    sd, kind, meta = read_weights_file(path)
    report = {"file": str(path), "kind": kind, "skipped": {}, "converted": None}
    if kind == "detectron2":
        from kit import detectron2_keys

        own_keys = net.state_dict().keys()
        sd, conv = detectron2_keys.convert(
            sd, num_classes=len(classes),
            with_bn_counters=any(k.endswith("num_batches_tracked") for k in own_keys))
        report["converted"] = conv.to_dict()
        if conv.input_mean is not None:
            report["input_normalisation"] = {"image_mean": conv.input_mean,
                                             "image_std": conv.input_std}
    own = net.state_dict()
    reinit_heads = kind == "kit" and list(meta.get("classes", classes)) != list(classes)
    from collections import OrderedDict

    filtered = OrderedDict()
    for k, v in sd.items():
        if reinit_heads and k.startswith(HEAD_KEYS):
            report["skipped"][k] = f"class-specific head of classes {meta.get('classes')}"
        elif k in own and tuple(own[k].shape) != tuple(v.shape):
            report["skipped"][k] = f"shape {tuple(v.shape)} != model's {tuple(own[k].shape)}"
        else:
            filtered[k] = v
    if getattr(sd, "_metadata", None) is not None:
        filtered._metadata = sd._metadata
    res = net.load_state_dict(filtered, strict=False)
    for k in res.unexpected_keys:
        report["skipped"][k] = "not in the model"
    # model tensors the file does not provide at all (skipped ones are listed under "skipped")
    report["missing"] = [k for k in res.missing_keys
                         if k not in report["skipped"] and not k.endswith("num_batches_tracked")]
    report["loaded"] = len(filtered) - len(res.unexpected_keys)
    return report


# ---------------------------------------------------------------------------------------------
# The model folder


class MaskRCNNModel:
    """A trained Mask R-CNN as a model folder: ``model.json`` (config) + ``model.pt`` (weights)."""

    TYPE = "maskrcnn"
    WEIGHTS = "model.pt"

    def __init__(self, config: MaskRCNNConfig, net=None, device=None, extra: dict | None = None):
        import torch

        self.config = config
        self.net = build_network(config.model) if net is None else net
        self.device = torch.device(device or "cpu")
        self.net.to(self.device).eval()
        self.extra = dict(extra or {})

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.model.classes)

    # -- inference ---------------------------------------------------------------------------

    def _stage1(self, image: np.ndarray):
        """Backbone, RPN and box head of one (H, W) uint8 image (no masks yet)."""
        import torch

        image = np.asarray(image)
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"image must be a 2-D (H, W) uint8 array, got shape {image.shape} "
                             f"dtype {image.dtype}")
        x = torch.from_numpy(image).to(self.device, torch.float32).div_(255.0)
        x = x[None].expand(3, -1, -1)
        net = self.net
        images, _ = net.transform([x])
        feats = net.backbone(images.tensors)
        proposals, _ = net.rpn(images, feats)
        det = net.roi_heads.detect(feats, proposals, images.image_sizes)[0]
        return feats, images.image_sizes, det

    def _to_detections(self, image_shape, image_size, det, masks=None) -> Detections:
        h, w = image_shape
        rh, rw = h / image_size[0], w / image_size[1]
        boxes = det["boxes"].float().cpu().numpy() * np.array([rw, rh, rw, rh], np.float32)
        return Detections(boxes, det["scores"].float().cpu().numpy(),
                          det["labels"].cpu().numpy() - 1,
                          None if masks is None else masks.float().cpu().numpy(),
                          (h, w), self.class_names)

    def predict_raw(self, image: np.ndarray, score_thresh: float | None = None) -> Detections:
        """Raw detections (score >= ``score_thresh``, default all) with 28x28 mask probabilities.

        Cache these and re-run :func:`kit.postprocess.postprocess` with other parameters.
        """
        import torch

        with torch.inference_mode():
            feats, sizes, det = self._stage1(image)
            if score_thresh is not None:
                keep = det["scores"] >= score_thresh
                det = {k: v[keep] for k, v in det.items()}
            masks = self.net.roi_heads.mask_probs(feats, det["boxes"], det["labels"], sizes,
                                                  self.config.model.mask_chunk)
        return self._to_detections(np.shape(image), sizes[0], det, masks)

    def predict(self, image: np.ndarray, cell_type: str | None = None) -> np.ndarray:
        """(H, W) int32 label image. The cell type is the detections' majority vote
        (config ``cell_type: vote``) or ``cell_type`` (``given``; vote when None).

        Same result as ``postprocess(predict_raw(image), ...)``, but the mask head runs only on
        the detections that survive the score threshold and box NMS.
        """
        import torch

        pp = self.config.postprocess
        if cell_type is not None and cell_type not in CELL_TYPES:
            raise ValueError(f"unknown cell_type {cell_type!r}; valid types are {list(CELL_TYPES)}")
        given = cell_type if self.config.cell_type == "given" else None
        h, w = np.shape(image)
        with torch.inference_mode():
            feats, sizes, det = self._stage1(image)
            dets = self._to_detections((h, w), sizes[0], det)
            ct, idx = select(dets, given, pp)
            if ct is None or len(idx) == 0:
                return np.zeros((h, w), np.int32)
            sel = torch.from_numpy(idx).to(self.device)
            masks = self.net.roi_heads.mask_probs(feats, det["boxes"][sel], det["labels"][sel],
                                                  sizes, self.config.model.mask_chunk)
        return paint(dets.boxes[idx], masks.float().cpu().numpy(), (h, w), pp.params(ct),
                     pp.nms_mode, pp.fill_holes)

    # -- folder ------------------------------------------------------------------------------

    def save(self, model_dir, state_dict=None) -> Path:
        """Write ``model.pt`` and ``model.json`` into ``model_dir`` (atomically each)."""
        import torch

        from kit import config as kconfig

        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        sd = self.net.state_dict() if state_dict is None else state_dict
        # weights first, so a model.json never names weights that are missing
        with atomic_open(d / self.WEIGHTS, "wb") as f:
            torch.save({"model": {k: v.detach().cpu() for k, v in sd.items()},
                        "classes": list(self.class_names)}, f)
        doc = {"type": self.TYPE, "weights": self.WEIGHTS, "config": kconfig.to_dict(self.config),
               **self.extra}
        with atomic_open(d / "model.json") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        return d

    @classmethod
    def load(cls, model_dir, device=None) -> "MaskRCNNModel":
        import torch

        from kit import config as kconfig

        from kit.models import read_model_json

        d = Path(model_dir)
        path, doc = read_model_json(d, cls.TYPE)
        cfg = kconfig.from_dict(MaskRCNNConfig, doc.get("config", {}), f"{path}: config")
        weights = d / doc.get("weights", cls.WEIGHTS)
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: weights file {weights} not found")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        net = build_network(cfg.model)
        from kit.models import model_file

        with model_file(weights, "Mask R-CNN weights file"):
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(sd["model"] if "model" in sd else sd)
        extra = {k: v for k, v in doc.items() if k not in ("type", "weights", "config")}
        return cls(cfg, net, device, extra)
