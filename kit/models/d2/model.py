"""The detectron2 model folder (``model.json`` + ``detectron2.yaml`` + ``model.pth``):
prediction, raw detections, save and load."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kit import CELL_TYPES
from kit.atomic import atomic_open
from kit.models.d2.config import Detectron2Config, require_detectron2
from kit.postprocess import Detections, paint, select

CFG_FILE = "detectron2.yaml"
# Boxes per mask-head forward at inference: its peak grows ~2.5 MB per box on CPU (256 x 14 x 14
# features through four convolutions and a 28 x 28 deconvolution); 1000 survivors at once would
# be ~2.5 GB. Each box's mask is its own, so the chunks change nothing in the result.
MASK_CHUNK = 50
WEIGHTS = "model.pth"


@contextmanager
def _inference(net):
    """The network in eval mode and torch in inference mode; the network's mode restored after
    (validation runs in the middle of training)."""
    import torch

    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        net.train(was_training)


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

    def _detect(self, image: np.ndarray):
        """detectron2's inference up to the box head: ``(features, instances, (h, w))``, the
        instances (boxes in network-input pixels, scores, classes, no masks yet) on the CPU-side
        device of the network. The image is resized as detectron2's ``DefaultPredictor`` does
        (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``). Call inside ``torch.inference_mode``
        with the network in eval mode."""
        import torch

        bgr = to_bgr(image)
        h, w = bgr.shape[:2]
        resized = self.resize.get_transform(bgr).apply_image(bgr)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)
        net = self.net
        images = net.preprocess_image([{"image": tensor}])
        features = net.backbone(images.tensor)
        proposals, _ = net.proposal_generator(images, features, None)
        # = roi_heads.forward in eval mode, split before its mask head
        instances = net.roi_heads._forward_box(features, proposals)[0]
        return features, instances, (h, w)

    def _masks(self, features, instances) -> np.ndarray:
        """(N, 28, 28) float32 mask probabilities of ``instances`` (detectron2's mask head on
        the given boxes, each box's own class channel), :data:`MASK_CHUNK` boxes at a time."""
        if len(instances) == 0:
            return np.zeros((0, 28, 28), np.float32)
        heads = self.net.roi_heads
        return np.concatenate([
            heads.forward_with_given_boxes(features, [instances[k:k + MASK_CHUNK]])[0]
            .pred_masks[:, 0].float().cpu().numpy() for k in range(0, len(instances), MASK_CHUNK)])

    def _to_detections(self, instances, image_shape, masks) -> Detections:
        h, w = image_shape
        rh, rw = instances.image_size
        boxes = instances.pred_boxes.tensor.float().cpu().numpy() \
            * np.array([w / rw, h / rh, w / rw, h / rh], np.float32)
        return Detections(boxes.astype(np.float32), instances.scores.float().cpu().numpy(),
                          instances.pred_classes.cpu().numpy().astype(np.int64), masks, (h, w),
                          self.class_names)

    def predict_raw(self, image: np.ndarray, score_thresh: float | None = None,
                    cell_type: str | None = None) -> Detections:
        """Raw detections of one (H, W) uint8 image: every box detectron2 keeps (score >=
        ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, and >= ``score_thresh`` when given) with its 28x28
        mask probabilities, boxes in original-image pixels (x1, y1, x2, y2), classes 0-based
        (its own: ``cell_type``, which the Mask R-CNN family passes every detector, is unused).

        detectron2's own inference (``inference(..., do_postprocess=False)``, in two steps), boxes
        scaled back like its ``detector_postprocess``; the masks are painted by
        :mod:`kit.postprocess`, not by detectron2's paste.
        """
        with _inference(self.net):
            features, instances, shape = self._detect(image)
            if score_thresh is not None:
                instances = instances[instances.scores >= score_thresh]
            return self._to_detections(instances, shape, self._masks(features, instances))

    def predict(self, image: np.ndarray, cell_type: str | None = None) -> np.ndarray:
        """(H, W) int32 label image: :func:`kit.postprocess.postprocess` of :meth:`predict_raw`
        with the image's type = the detections' vote (config ``cell_type: vote``) or
        ``cell_type`` (``given``; vote when None). The mask head runs only on the detections
        that pass the type's score threshold and box NMS (each box's mask depends on its box
        alone, so the label image is the same)."""
        if cell_type is not None and cell_type not in CELL_TYPES:
            raise ValueError(f"unknown cell_type {cell_type!r}; valid types are {list(CELL_TYPES)}")
        given = cell_type if self.config.cell_type == "given" else None
        import torch

        pp = self.config.postprocess
        with _inference(self.net):
            features, instances, shape = self._detect(image)
            dets = self._to_detections(instances, shape, None)
            ct, idx = select(dets, given, pp)
            if ct is None or len(idx) == 0:
                return np.zeros(shape, np.int32)
            masks = self._masks(features, instances[torch.from_numpy(idx)])
        return paint(dets.boxes[idx], masks, shape, pp.params(ct), pp.nms_mode, pp.fill_holes)

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
