"""The detectron2 model folder (``model.json`` + ``detectron2.yaml`` + ``model.pth``):
prediction, raw detections, save and load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit import CELL_TYPES
from kit.atomic import atomic_open
from kit.models.d2.config import Detectron2Config, require_detectron2
from kit.postprocess import Detections, postprocess

CFG_FILE = "detectron2.yaml"
WEIGHTS = "model.pth"


def to_bgr(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR of a (H, W) uint8 grayscale image: the three channels equal, as
    detectron2's ``read_image(format="BGR")`` makes of a grayscale PNG."""
    from kit.models import check_image

    return np.repeat(check_image(image)[:, :, None], 3, axis=2)


class Detectron2Model:
    """A detectron2 ``GeneralizedRCNN`` with the kit's post-processing.

    ``cfg``: detectron2's ``CfgNode`` (the resolved config, saved whole as ``detectron2.yaml``
    so that loading needs no base file); ``config``: the kit's :class:`Detectron2Config`
    (``postprocess``, ``cell_type``, ``classes``); ``net``: the network (built from ``cfg``
    when None)."""

    TYPE = "detectron2"

    def __init__(self, config: Detectron2Config, cfg, net=None, extra: dict | None = None):
        require_detectron2()
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        self.config = config
        self.cfg = cfg
        self.net = build_model(cfg) if net is None else net
        self.net.eval()
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.extra = dict(extra or {})

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.classes)

    # -- inference ---------------------------------------------------------------------------

    def predict_raw(self, image: np.ndarray, score_thresh: float | None = None) -> Detections:
        """Raw detections of one (H, W) uint8 image: every box detectron2 keeps (score >=
        ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, and >= ``score_thresh`` when given) with its 28x28
        mask probabilities, boxes in original-image pixels (x1, y1, x2, y2), classes 0-based.

        detectron2's own ``inference(..., do_postprocess=False)``: the image resized as
        ``DefaultPredictor`` does (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), then boxes
        scaled back like its ``detector_postprocess``; the masks are painted by
        :mod:`kit.postprocess`, not by detectron2's paste.
        """
        import torch

        bgr = to_bgr(image)
        h, w = bgr.shape[:2]
        resized = self.resize.get_transform(bgr).apply_image(bgr)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)
        was_training = self.net.training
        self.net.eval()
        with torch.inference_mode():
            inst = self.net.inference([{"image": tensor, "height": h, "width": w}],
                                      do_postprocess=False)[0]
        self.net.train(was_training)
        inst = inst.to("cpu")
        rh, rw = inst.image_size
        boxes = inst.pred_boxes.tensor.numpy() * np.array([w / rw, h / rh, w / rw, h / rh], np.float32)
        scores = inst.scores.numpy()
        classes = inst.pred_classes.numpy()
        masks = inst.pred_masks[:, 0].float().numpy() if len(inst) else np.zeros((0, 28, 28), np.float32)
        if score_thresh is not None:
            keep = scores >= score_thresh
            boxes, scores, classes, masks = boxes[keep], scores[keep], classes[keep], masks[keep]
        return Detections(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int64),
                          masks.astype(np.float32), (h, w), self.class_names)

    def predict(self, image: np.ndarray, cell_type: str | None = None) -> np.ndarray:
        """(H, W) int32 label image: :func:`kit.postprocess.postprocess` of :meth:`predict_raw`
        with the image's type = the detections' vote (config ``cell_type: vote``) or
        ``cell_type`` (``given``; vote when None)."""
        if cell_type is not None and cell_type not in CELL_TYPES:
            raise ValueError(f"unknown cell_type {cell_type!r}; valid types are {list(CELL_TYPES)}")
        given = cell_type if self.config.cell_type == "given" else None
        return postprocess(self.predict_raw(image), given, self.config.postprocess)

    # -- folder ------------------------------------------------------------------------------

    def save(self, model_dir, state_dict=None) -> Path:
        """Write ``model.pth`` (detectron2 checkpoint format: ``{"model": state_dict}``),
        ``detectron2.yaml`` and ``model.json`` into ``model_dir``, atomically each; model.json
        last, so it never names files that are missing."""
        import torch

        from kit import config as kconfig

        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        sd = self.net.state_dict() if state_dict is None else state_dict
        with atomic_open(d / WEIGHTS, "wb") as f:
            torch.save({"model": {k: v.detach().cpu() for k, v in sd.items()},
                        "classes": list(self.class_names)}, f)
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""
        with atomic_open(d / CFG_FILE) as f:
            f.write(cfg.dump())
        doc = {"type": self.TYPE, "weights": WEIGHTS, "detectron2_config": CFG_FILE,
               "config": kconfig.to_dict(self.config), **self.extra}
        with atomic_open(d / "model.json") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        return d

    @classmethod
    def load(cls, model_dir, device=None) -> "Detectron2Model":
        """The model in ``model_dir``, on ``device`` (default: CUDA when torch sees it)."""
        import torch

        from kit import config as kconfig
        from kit.models import model_file, read_model_json

        require_detectron2()
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        d = Path(model_dir)
        path, doc = read_model_json(d, cls.TYPE)
        config = kconfig.from_dict(Detectron2Config, doc.get("config", {}), f"{path}: config")
        cfg_path = d / doc.get("detectron2_config", CFG_FILE)
        weights = d / doc.get("weights", WEIGHTS)
        for f in (cfg_path, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{path}: {f.name} not found in {d}")
        cfg = get_cfg()
        with model_file(cfg_path, "detectron2 config"):
            cfg.merge_from_file(str(cfg_path))
        cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
        net = build_model(cfg)
        with model_file(weights, "detectron2 weights file"):
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(sd["model"] if "model" in sd else sd)
        extra = {k: v for k, v in doc.items()
                 if k not in ("type", "weights", "config", "detectron2_config")}
        return cls(config, cfg, net, extra)
