"""detectron2 Mask R-CNN R50-FPN checkpoint -> torchvision ``MaskRCNN`` state dict.

``python -m kit.import_detectron2 CHECKPOINT --out MODEL_DIR [--config FILE] [--pixel-mean B G R]
[--pixel-std B G R] [--no-stride-in-1x1]`` writes a kit model folder with it (``kit.predict``
reads it; ``kit.train maskrcnn --pretrained MODEL_DIR/model.pt`` fine-tunes it).

The key map (detectron2 0.6 names, see tests/fixtures/...state_dict_shapes.json)::

    backbone.bottom_up.stem.conv1.weight           -> backbone.body.conv1.weight  (input channels BGR->RGB)
    backbone.bottom_up.stem.conv1.norm.*           -> backbone.body.bn1.*
    backbone.bottom_up.res{s}.{b}.conv{j}.weight   -> backbone.body.layer{s-1}.{b}.conv{j}.weight
    backbone.bottom_up.res{s}.{b}.conv{j}.norm.*   -> backbone.body.layer{s-1}.{b}.bn{j}.*
    backbone.bottom_up.res{s}.{b}.shortcut.weight  -> backbone.body.layer{s-1}.{b}.downsample.0.weight
    backbone.bottom_up.res{s}.{b}.shortcut.norm.*  -> backbone.body.layer{s-1}.{b}.downsample.1.*
    backbone.fpn_lateral{k}.*                      -> backbone.fpn.inner_blocks.{k-2}.0.*
    backbone.fpn_output{k}.*                       -> backbone.fpn.layer_blocks.{k-2}.0.*
    proposal_generator.rpn_head.conv.*             -> rpn.head.conv.0.0.*
    proposal_generator.rpn_head.objectness_logits.*-> rpn.head.cls_logits.*
    proposal_generator.rpn_head.anchor_deltas.*    -> rpn.head.bbox_pred.*
    roi_heads.box_head.fc1.* / fc2.*               -> roi_heads.box_head.fc6.* / fc7.*
    roi_heads.box_predictor.cls_score.*            -> same name, rows reordered: detectron2 puts
                                                      background LAST (index K), torchvision FIRST (0)
    roi_heads.box_predictor.bbox_pred.*            -> same name, 4K -> 4(K+1) rows: zero rows for the
                                                      background in front (a class-agnostic 4-row
                                                      regressor is repeated for every class)
    roi_heads.mask_head.mask_fcn{i}.*              -> roi_heads.mask_head.{i-1}.0.*
    roi_heads.mask_head.deconv.*                   -> roi_heads.mask_predictor.conv5_mask.*
    roi_heads.mask_head.predictor.*                -> roi_heads.mask_predictor.mask_fcn_logits.*,
                                                      K -> K+1 channels: zero background channel 0
                                                      (a class-agnostic 1-channel predictor is repeated)
    (BatchNorm2d models)                           -> *.num_batches_tracked = 0 (filled)
    pixel_mean / pixel_std (old checkpoints)       -> consumed as the input normalisation

Input normalisation: detectron2 feeds BGR 0-255 images ``(x - PIXEL_MEAN) / PIXEL_STD`` (BGR
order; R50 MSRA defaults mean (103.530, 116.280, 123.675), std (1, 1, 1)); torchvision feeds RGB
0-1 ``(x - image_mean) / image_std``. So ``image_mean = PIXEL_MEAN[::-1] / 255``,
``image_std = PIXEL_STD[::-1] / 255`` and the first conv's input channels are flipped BGR->RGB;
then the normalised tensors agree exactly (up to float rounding).

Where the architectures agree, and where not (what "same outputs" means):

* ResNet: detectron2's MSRA R-50 (``STRIDE_IN_1X1: True``) strides in the first block's 1x1
  conv, torchvision in the 3x3 conv. Weights load either way (same shapes) but the features
  differ; build the network with ``model.stride_in_1x1: true`` (the import CLI does) and the
  body is exactly detectron2's. FrozenBN = BatchNorm in eval mode with the same eps (1e-5).
* FPN, RPN head, box head + predictor, mask head + predictor: same functions (tested module
  by module against a plain-``torch.nn.functional`` detectron2-layout reference).
* ROI pooling: detectron2's ROIAlignV2 (``aligned=True``, sampling ratio 0) = this kit's pooler
  with ``roi_align_aligned: true, roi_sampling_ratio: 0`` (the defaults); torchvision's own is
  ``aligned=False, sampling_ratio=2`` (a half-pixel shift).
* Not identical: torchvision rounds anchor corners to integers (detectron2 does not), so
  proposals and hence final boxes differ slightly; box-head NMS/top-k and the RPN's per-level
  top-k follow the same rules. Mask pasting is :mod:`kit.postprocess` (detectron2's rule).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["convert", "ConversionReport", "rename", "D2_DEFAULT_PIXEL_MEAN", "D2_DEFAULT_PIXEL_STD",
           "input_normalisation"]

# detectron2 Base-RCNN-FPN defaults (MODEL.PIXEL_MEAN / PIXEL_STD, BGR, 0-255).
D2_DEFAULT_PIXEL_MEAN = (103.530, 116.280, 123.675)
D2_DEFAULT_PIXEL_STD = (1.0, 1.0, 1.0)

_BN = r"(weight|bias|running_mean|running_var)"
_RULES = [
    (re.compile(r"backbone\.bottom_up\.stem\.conv1\.weight$"), "backbone.body.conv1.weight"),
    (re.compile(rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_BN}$"), r"backbone.body.bn1.\1"),
    (re.compile(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.weight$"),
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.norm\.{_BN}$"),
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    (re.compile(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.weight$"),
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (re.compile(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.norm\.{_BN}$"),
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    (re.compile(r"backbone\.fpn_lateral([2-5])\.(weight|bias)$"),
     lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (re.compile(r"backbone\.fpn_output([2-5])\.(weight|bias)$"),
     lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (re.compile(r"proposal_generator\.rpn_head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)$"),
     r"rpn.head.cls_logits.\1"),
    (re.compile(r"proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)$"),
     r"rpn.head.bbox_pred.\1"),
    (re.compile(r"roi_heads\.box_head\.fc1\.(weight|bias)$"), r"roi_heads.box_head.fc6.\1"),
    (re.compile(r"roi_heads\.box_head\.fc2\.(weight|bias)$"), r"roi_heads.box_head.fc7.\1"),
    (re.compile(r"roi_heads\.box_predictor\.cls_score\.(weight|bias)$"),
     r"roi_heads.box_predictor.cls_score.\1"),
    (re.compile(r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)$"),
     r"roi_heads.box_predictor.bbox_pred.\1"),
    (re.compile(r"roi_heads\.mask_head\.mask_fcn([1-4])\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"),
    (re.compile(r"roi_heads\.mask_head\.deconv\.(weight|bias)$"),
     r"roi_heads.mask_predictor.conv5_mask.\1"),
    (re.compile(r"roi_heads\.mask_head\.predictor\.(weight|bias)$"),
     r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
]


def rename(d2_key: str) -> str | None:
    """torchvision name of a detectron2 parameter name (None: no counterpart)."""
    for pat, repl in _RULES:
        m = pat.match(d2_key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


@dataclass
class ConversionReport:
    """What :func:`convert` did with every key."""

    consumed: list[str] = field(default_factory=list)      # detectron2 keys used
    skipped: dict[str, str] = field(default_factory=dict)  # detectron2 key -> why not used
    filled: dict[str, str] = field(default_factory=dict)   # torchvision key -> how made
    num_classes: int = 0
    input_mean: list[float] | None = None                  # torchvision image_mean (RGB, 0-1)
    input_std: list[float] | None = None

    def to_dict(self) -> dict:
        return {"consumed": len(self.consumed), "skipped": dict(self.skipped),
                "filled": dict(self.filled), "num_classes": self.num_classes,
                "input_mean": self.input_mean, "input_std": self.input_std}


def input_normalisation(pixel_mean_bgr, pixel_std_bgr) -> tuple[list[float], list[float]]:
    """torchvision ``(image_mean, image_std)`` (RGB, 0-1) of detectron2 PIXEL_MEAN/STD (BGR, 0-255)."""
    mean = [float(v) / 255.0 for v in list(pixel_mean_bgr)[::-1]]
    std = [float(v) / 255.0 for v in list(pixel_std_bgr)[::-1]]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"pixel mean/std must be 3 values (std > 0), got {pixel_mean_bgr}, {pixel_std_bgr}")
    return mean, std


def convert(d2, num_classes: int | None = None, *, pixel_mean=None, pixel_std=None,
            bgr_to_rgb: bool = True, with_bn_counters: bool = True):
    """``(torchvision state dict, ConversionReport)`` of a detectron2 R50-FPN Mask R-CNN state dict.

    ``num_classes`` (K, without background) is checked against the checkpoint's when given.
    ``pixel_mean`` / ``pixel_std`` (BGR, 0-255) default to the checkpoint's ``pixel_mean`` /
    ``pixel_std`` buffers, else detectron2's defaults; the report carries the torchvision
    equivalents. ``bgr_to_rgb`` flips the first conv's input channels.
    """
    import torch

    rep = ConversionReport()
    d2 = OrderedDict((k, v if isinstance(v, torch.Tensor) else torch.as_tensor(v)) for k, v in d2.items())
    k_cls = d2.get("roi_heads.box_predictor.cls_score.weight")
    if k_cls is None:
        raise ValueError("not a detectron2 Mask R-CNN state dict: no roi_heads.box_predictor.cls_score.weight")
    k = int(k_cls.shape[0]) - 1
    if num_classes is not None and num_classes != k:
        raise ValueError(f"the checkpoint has {k} classes (cls_score has {k + 1} rows, background "
                         f"last), the model {num_classes}")
    rep.num_classes = k

    mean = d2.get("pixel_mean")
    std = d2.get("pixel_std")
    mean = pixel_mean if pixel_mean is not None else (mean.flatten().tolist() if mean is not None
                                                      else D2_DEFAULT_PIXEL_MEAN)
    std = pixel_std if pixel_std is not None else (std.flatten().tolist() if std is not None
                                                   else D2_DEFAULT_PIXEL_STD)
    if bgr_to_rgb:
        rep.input_mean, rep.input_std = input_normalisation(mean, std)
    else:
        rep.input_mean = [float(v) / 255.0 for v in mean]
        rep.input_std = [float(v) / 255.0 for v in std]

    out = OrderedDict()
    for key, v in d2.items():
        if key in ("pixel_mean", "pixel_std"):
            rep.consumed.append(key)
            continue
        new = rename(key)
        if new is None:
            rep.skipped[key] = "no torchvision counterpart"
            continue
        v = v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
        if new == "backbone.body.conv1.weight" and bgr_to_rgb:
            v = v.flip(1)
        elif new.startswith("roi_heads.box_predictor.cls_score."):
            v = torch.cat([v[k:k + 1], v[:k]])         # background last -> first
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            if v.shape[0] == 4:                          # class-agnostic regression
                v = v.repeat(k, *([1] * (v.dim() - 1)))
            if v.shape[0] != 4 * k:
                raise ValueError(f"{key}: expected {4 * k} rows, got {tuple(v.shape)}")
            v = torch.cat([torch.zeros_like(v[:4]), v])  # background deltas: never used
        elif new.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            if v.shape[0] == 1:                          # class-agnostic mask
                v = v.repeat(k, *([1] * (v.dim() - 1)))
            if v.shape[0] != k:
                raise ValueError(f"{key}: expected {k} channels, got {tuple(v.shape)}")
            v = torch.cat([torch.zeros_like(v[:1]), v])  # background channel: never used
        out[new] = v
        rep.consumed.append(key)
    rep.filled["roi_heads.box_predictor.bbox_pred.*[0:4]"] = "zeros (background class)"
    rep.filled["roi_heads.mask_predictor.mask_fcn_logits.*[0]"] = "zeros (background class)"
    if with_bn_counters:
        for key in list(out):
            if key.endswith(".running_var"):
                counter = key[:-len("running_var")] + "num_batches_tracked"
                out[counter] = torch.tensor(0, dtype=torch.long)
                rep.filled[counter] = "0 (BatchNorm2d counter; detectron2 uses FrozenBN)"
    return out, rep
