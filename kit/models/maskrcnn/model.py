"""The Mask R-CNN model folder (``model.json`` + ``model.pt``): prediction, raw detections,
save and load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit import CELL_TYPES, check_cell_type
from kit.atomic import atomic_open
from kit.models.maskrcnn.config import ONE_CLASS, MaskRCNNConfig
from kit.models.maskrcnn.network import build_network
from kit.postprocess import Detections, paint, select


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

    @property
    def one_class(self) -> bool:
        """True for ``model.classes: [cell]``: the image's cell type must be given."""
        return self.class_names == ONE_CLASS

    def _check_type(self, cell_type: str | None) -> None:
        if cell_type is not None:
            check_cell_type(cell_type)
        elif self.one_class:
            raise ValueError("this Mask R-CNN has one class for every cell type (model.classes "
                             "[cell]): it needs the image's cell type (kit.predict: --cell-types "
                             "or the model folder's celltype.joblib)")

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

    def _to_detections(self, image_shape, image_size, det, masks=None,
                       cell_type: str | None = None) -> Detections:
        """Detections in original-image pixels; a one-class model's carry ``cell_type``
        (classes over :data:`kit.CELL_TYPES`), every other model's its own class names."""
        h, w = image_shape
        rh, rw = h / image_size[0], w / image_size[1]
        boxes = det["boxes"].float().cpu().numpy() * np.array([rw, rh, rw, rh], np.float32)
        classes, names = det["labels"].cpu().numpy() - 1, self.class_names
        if self.one_class:
            classes, names = np.full(len(classes), CELL_TYPES.index(cell_type)), CELL_TYPES
        return Detections(boxes, det["scores"].float().cpu().numpy(), classes,
                          None if masks is None else masks.float().cpu().numpy(),
                          (h, w), names)

    def predict_raw(self, image: np.ndarray, score_thresh: float | None = None,
                    cell_type: str | None = None) -> Detections:
        """Raw detections (score >= ``score_thresh``, default all) with 28x28 mask probabilities.

        Cache these and re-run :func:`kit.postprocess.postprocess` with other parameters.
        ``cell_type`` is needed by a one-class model (:attr:`one_class`): its detections are
        all of that type; other models ignore it (their classes are their own).
        """
        import torch

        self._check_type(cell_type)
        with torch.inference_mode():
            feats, sizes, det = self._stage1(image)
            if score_thresh is not None:
                keep = det["scores"] >= score_thresh
                det = {k: v[keep] for k, v in det.items()}
            masks = self.net.roi_heads.mask_probs(feats, det["boxes"], det["labels"], sizes,
                                                  self.config.model.mask_chunk)
        return self._to_detections(np.shape(image), sizes[0], det, masks, cell_type)

    def predict(self, image: np.ndarray, cell_type: str | None = None) -> np.ndarray:
        """(H, W) int32 label image. The cell type is the detections' majority vote
        (config ``cell_type: vote``) or ``cell_type`` (``given``; vote when None, except for
        a one-class model, which needs it).

        Same result as ``postprocess(predict_raw(image), ...)``, but the mask head runs only on
        the detections that survive the score threshold and box NMS.
        """
        import torch

        pp = self.config.postprocess
        self._check_type(cell_type)
        given = cell_type if self.config.cell_type == "given" else None
        h, w = np.shape(image)
        with torch.inference_mode():
            feats, sizes, det = self._stage1(image)
            dets = self._to_detections((h, w), sizes[0], det, cell_type=cell_type)
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
