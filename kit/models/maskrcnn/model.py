"""The Mask R-CNN model folder (``model.json`` + ``model.pt``): prediction, raw detections,
save and load.

A folder may also hold cell-type specialists (``train.specialize``): ``specialist_<type>.pt``,
the same network fine-tuned on that type's images alone, listed in ``model.json`` under
``specialists``. An image whose cell type is known (given, or the all-type network's vote) is
then segmented by its type's specialist.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit import CELL_TYPES, check_cell_type
from kit.atomic import atomic_open
from kit.models.maskrcnn.config import ONE_CLASS, MaskRCNNConfig
from kit.models.maskrcnn.network import build_network
from kit.postprocess import Detections, paint, select


def specialist_file(cell_type: str) -> str:
    """The file name of a cell type's specialist weights in a model folder."""
    return f"specialist_{cell_type}.pt"


class MaskRCNNModel:
    """A trained Mask R-CNN as a model folder: ``model.json`` (config) + ``model.pt`` (weights),
    plus ``specialists``: cell type -> network of the same config for images of that type."""

    TYPE = "maskrcnn"
    WEIGHTS = "model.pt"

    def __init__(self, config: MaskRCNNConfig, net=None, device=None, extra: dict | None = None,
                 specialists: dict | None = None):
        import torch

        self.config = config
        self.net = build_network(config.model) if net is None else net
        self.device = torch.device(device or "cpu")
        self.net.to(self.device).eval()
        self.specialists = {ct: n.to(self.device).eval() for ct, n in (specialists or {}).items()}
        self.extra = dict(extra or {})

    def _net_for(self, cell_type: str | None):
        """The network that segments an image of ``cell_type`` (None: the all-type one)."""
        return self.specialists.get(cell_type, self.net)

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

    def _stage1(self, image: np.ndarray, net):
        """Backbone, RPN and box head of ``net`` on one (H, W) uint8 image (no masks yet)."""
        import torch

        image = np.asarray(image)
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"image must be a 2-D (H, W) uint8 array, got shape {image.shape} "
                             f"dtype {image.dtype}")
        x = torch.from_numpy(image).to(self.device, torch.float32).div_(255.0)
        x = x[None].expand(3, -1, -1)
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
        all of that type; other models keep their own classes. A type with a specialist is
        segmented by the specialist.
        """
        import torch

        self._check_type(cell_type)
        net = self._net_for(cell_type)
        with torch.inference_mode():
            feats, sizes, det = self._stage1(image, net)
            if score_thresh is not None:
                keep = det["scores"] >= score_thresh
                det = {k: v[keep] for k, v in det.items()}
            masks = net.roi_heads.mask_probs(feats, det["boxes"], det["labels"], sizes,
                                                  self.config.model.mask_chunk)
        return self._to_detections(np.shape(image), sizes[0], det, masks, cell_type)

    def predict(self, image: np.ndarray, cell_type: str | None = None) -> np.ndarray:
        """(H, W) int32 label image. The cell type is the detections' majority vote
        (config ``cell_type: vote``) or ``cell_type`` (``given``; vote when None, except for
        a one-class model, which needs it). A type with a specialist is segmented by the
        specialist: a voted type after the all-type network's vote, a given one at once.

        Same result as ``postprocess(predict_raw(image), ...)``, but the mask head runs only on
        the detections that survive the score threshold and box NMS.
        """
        import torch

        pp = self.config.postprocess
        self._check_type(cell_type)
        given = cell_type if self.config.cell_type == "given" else None
        h, w = np.shape(image)
        with torch.inference_mode():
            net = self._net_for(given)
            feats, sizes, det = self._stage1(image, net)
            dets = self._to_detections((h, w), sizes[0], det, cell_type=cell_type)
            ct, idx = select(dets, given, pp)
            if given is None and ct in self.specialists:  # the vote chose a specialist's type
                net = self.specialists[ct]
                feats, sizes, det = self._stage1(image, net)
                dets = self._to_detections((h, w), sizes[0], det, cell_type=cell_type)
                ct, idx = select(dets, ct, pp)
            if ct is None or len(idx) == 0:
                return np.zeros((h, w), np.int32)
            sel = torch.from_numpy(idx).to(self.device)
            masks = net.roi_heads.mask_probs(feats, det["boxes"][sel], det["labels"][sel],
                                                  sizes, self.config.model.mask_chunk)
        return paint(dets.boxes[idx], masks.float().cpu().numpy(), (h, w), pp.params(ct),
                     pp.nms_mode, pp.fill_holes)

    # -- folder ------------------------------------------------------------------------------

    def save(self, model_dir, state_dict=None) -> Path:
        """Write ``model.pt`` and ``model.json`` into ``model_dir`` (atomically each), and the
        specialists' weights files."""
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        # weights first, so a model.json never names weights that are missing
        _save_weights(d / self.WEIGHTS, self.net.state_dict() if state_dict is None else state_dict,
                      self.class_names)
        for ct, net in self.specialists.items():
            _save_weights(d / specialist_file(ct), net.state_dict(), self.class_names)
        self._write_json(d)
        return d

    def save_specialist(self, model_dir, cell_type: str, net, info: dict) -> None:
        """Add (or replace) ``cell_type``'s specialist in the saved folder ``model_dir``: its
        weights file, then ``model.json`` listing it with ``info`` (how it was chosen)."""
        check_cell_type(cell_type)
        d = Path(model_dir)
        _save_weights(d / specialist_file(cell_type), net.state_dict(), self.class_names)
        self.specialists[cell_type] = net
        listed = dict(self.extra.get("specialists", {}))
        listed[cell_type] = {"weights": specialist_file(cell_type), **info}
        self.extra["specialists"] = listed
        self._write_json(d)

    def drop_specialists(self, model_dir) -> None:
        """Forget every specialist: ``model.json`` in ``model_dir`` no longer lists them (their
        weights files stay until replaced)."""
        self.specialists = {}
        self.extra.pop("specialists", None)
        self._write_json(Path(model_dir))

    def _write_json(self, d: Path) -> None:
        from kit import config as kconfig

        listed = self.extra.get("specialists", {})
        if sorted(listed) != sorted(self.specialists):
            raise ValueError(f"model.json would list specialists {sorted(listed)} but the model "
                             f"holds {sorted(self.specialists)}")
        doc = {"type": self.TYPE, "weights": self.WEIGHTS, "config": kconfig.to_dict(self.config),
               **self.extra}
        with atomic_open(d / "model.json") as f:
            f.write(json.dumps(doc, indent=1) + "\n")

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
        net = _load_weights(weights, cfg)
        specialists = {}
        for ct, entry in doc.get("specialists", {}).items():
            check_cell_type(ct)
            file = d / entry.get("weights", specialist_file(ct))
            if not file.is_file():
                raise FileNotFoundError(f"{path}: specialist {ct!r}: weights file {file} not found")
            specialists[ct] = _load_weights(file, cfg)
        extra = {k: v for k, v in doc.items() if k not in ("type", "weights", "config")}
        return cls(cfg, net, device, extra, specialists)


def _save_weights(path: Path, state_dict, classes) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save({"model": {k: v.detach().cpu() for k, v in state_dict.items()},
                    "classes": list(classes)}, f)


def _load_weights(path: Path, cfg: MaskRCNNConfig):
    """A network of ``cfg.model`` with the weights of ``path`` (a kit weights file)."""
    import torch

    from kit.models import model_file

    net = build_network(cfg.model)
    with model_file(path, "Mask R-CNN weights file"):
        sd = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(sd["model"] if "model" in sd else sd)
    return net
