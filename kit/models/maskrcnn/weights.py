"""Weights files: read a user-supplied torchvision, kit or detectron2 checkpoint (never a
download) and load it into a network, re-initialising the class-specific heads when the classes
differ."""
from __future__ import annotations

from pathlib import Path

import numpy as np

HEAD_KEYS = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
             "roi_heads.mask_predictor.mask_fcn_logits.")


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
    (:func:`kit.models.maskrcnn.detectron2_keys.convert`). Report: ``{"kind", "loaded", "skipped": {key:
    reason}, "missing": [...], "converted": {...}}``.
    """
    sd, kind, meta = read_weights_file(path)
    report = {"file": str(path), "kind": kind, "skipped": {}, "converted": None}
    if kind == "detectron2":
        from kit.models.maskrcnn import detectron2_keys

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
