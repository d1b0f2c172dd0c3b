"""Cellpose inference: a loaded model folder (:class:`CellposeSegmenter`): the diameter of an
image, the network's raw outputs and cellpose's dynamics on them.

A folder may also hold cell-type specialists (``train.specialize``): ``cellpose_net_<type>``,
CPnets of the same config listed in ``model.json`` under ``specialists``. An image of such a
type gets its flows from its specialist; its diameter still comes from the all-type network's
settings (median or size model)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from kit import CELL_TYPES, check_cell_type
from kit import config as _config
from kit.models.cellpose.config import (CHANNELS, WEIGHTS, CellposeConfig, CellTypeConfig,
                                        renamed_keys, specialist_weights)
from kit.models.cellpose.data import _normalize_params
from kit.models.cellpose.network import _load_state_dict, _new_cellpose_model
from kit.memo import BoundedMemo


# (key, cellprob_threshold, niter, max_size_fraction) -> masks before the flow check
_FLOW_MEMO = BoundedMemo(8)


def _followed_masks(dP, cellprob, niter, cellprob_threshold, max_size_fraction, device, key):
    """Cellpose's masks after following the flows, before the flow check and the size filter
    (what :func:`cellpose.dynamics.compute_masks` does first), memoised per ``key`` (a cached
    image's name) and the two settings they depend on: candidates that differ only in
    ``flow_threshold`` or ``min_size`` reuse them."""
    from cellpose import dynamics

    def follow():
        return dynamics.compute_masks(dP, cellprob, niter=niter, cellprob_threshold=cellprob_threshold,
                                      flow_threshold=0.0, interp=True,
                                      max_size_fraction=max_size_fraction, device=device)

    if key is None:
        return follow()
    memo_key = (key, float(cellprob_threshold), float(niter), float(max_size_fraction))
    return _FLOW_MEMO.get(memo_key, follow).copy()  # the later steps edit masks in place


def labels_from_raw(raw: dict, params: CellTypeConfig | dict, max_size_fraction: float = 0.4,
                    device=None, key=None) -> np.ndarray:
    """(H, W) int32 labels ``1..N`` (non-overlapping) of a raw output
    (:meth:`CellposeSegmenter.predict_raw`) by cellpose's dynamics, without a network.

    ``params``: a :class:`CellTypeConfig` or a dict of its keys (checked; missing keys take the
    class defaults); ``params.niter`` None = the raw output's ``niter``. ``max_size_fraction``:
    masks larger than this fraction of the image are dropped (cellpose's rule). ``device``:
    a ``torch.device`` for the dynamics (default CPU). ``key``: a hashable name of this raw
    output; with it the flow-following step is memoised (:func:`_followed_masks`), so a search
    over ``flow_threshold`` / ``min_size`` runs it once per ``cellprob_threshold``.

    The steps are cellpose's ``resize_and_compute_masks``: follow the flows, the flow check
    (``flow_threshold`` > 0), resize to the image, fill holes and drop masks below ``min_size``.
    """
    import cv2
    import fastremap
    from cellpose import dynamics, transforms, utils

    if isinstance(params, dict):
        params = _config.from_dict(CellTypeConfig, params, "params")
    if device is None:
        import torch

        device = torch.device("cpu")
    shape = tuple(raw["shape"])
    dP, cellprob = raw["dP"], raw["cellprob"]
    resize = None if tuple(cellprob.shape) == shape else list(shape)
    niter = params.niter if params.niter is not None else raw["niter"]
    masks = _followed_masks(dP, cellprob, niter, params.cellprob_threshold, max_size_fraction,
                            device, key)
    if masks.max() > 0 and params.flow_threshold is not None and params.flow_threshold > 0:
        masks = dynamics.remove_bad_flow_masks(masks, dP, threshold=params.flow_threshold,
                                               device=device)
    if masks.max() < 2 ** 16 and masks.dtype != np.uint16:
        masks = masks.astype(np.uint16)
    if resize is not None:
        masks = transforms.resize_image(masks, resize[0], resize[1], no_channels=True,
                                        interpolation=cv2.INTER_NEAREST)
    masks = utils.fill_holes_and_remove_small_masks(masks, min_size=params.min_size)
    labels = np.asarray(masks).astype(np.int32, copy=False)
    labels, _ = fastremap.renumber(labels, in_place=True)
    return np.ascontiguousarray(labels, dtype=np.int32)


def _check_image(image) -> np.ndarray:
    from kit.models import check_image

    return check_image(image)


class CellposeSegmenter:
    """A loaded cellpose model folder (see the module docstring)."""

    TYPE = "cellpose"

    def __init__(self, cp, config: CellposeConfig, diameters: dict, size_params: dict | None,
                 folder: Path | None = None, specialists: dict | None = None):
        self.cp = cp
        self.config = config
        self.diameters = {ct: float(diameters[ct]["diameter"]) for ct in CELL_TYPES}
        self.size_params = size_params
        self.folder = folder
        self.specialists = dict(specialists or {})  # cell type -> CellposeModel of its images

    @staticmethod
    def load_network(weights: Path, config: CellposeConfig):
        """A ``CellposeModel`` for inference with the CPnet weights file ``weights`` (checked:
        width and ``diam_mean`` of ``config``)."""
        cp = _new_cellpose_model(config.diam_mean, inference=True, width=config.width)
        _load_state_dict(cp.net, weights, config.diam_mean)
        cp.net.eval()
        cp.diam_mean = float(cp.net.diam_mean.item())
        cp.diam_labels = float(cp.net.diam_labels.item())
        return cp

    @property
    def diam_mean(self) -> float:
        return float(self.cp.diam_mean)

    @classmethod
    def load(cls, model_dir) -> "CellposeSegmenter":
        """Read a folder written by :func:`fit` (only ``model.json``, the weights and the size
        model are read)."""
        from kit.models import read_model_json

        folder = Path(model_dir)
        path, doc = read_model_json(folder, cls.TYPE)
        cfg = CellposeConfig.from_dict(renamed_keys(doc["config"]), where=f"{path}: config")
        nets = {None: doc.get("weights", WEIGHTS)}
        for ct, info in (doc.get("specialists") or {}).items():
            check_cell_type(ct)
            nets[ct] = info.get("weights", specialist_weights(ct))
        loaded = {}
        for ct, name in nets.items():
            weights = folder / name
            what = "weights file" if ct is None else f"{ct} specialist's weights file"
            if not weights.is_file():
                raise FileNotFoundError(f"{folder}: {what} {weights.name} is missing")
            loaded[ct] = cls.load_network(weights, cfg)
        cp = loaded.pop(None)
        size_params = None
        if doc.get("size_model"):
            size_file = folder / doc["size_model"]
            if not size_file.is_file():
                raise FileNotFoundError(f"{folder}: size model file {size_file.name} is missing")
            # cellpose's format: a pickled dict {A, smean, ymean, diam_mean} in a .npy
            from kit.models import model_file

            with model_file(size_file, "size model file"):
                size_params = np.load(size_file, allow_pickle=True).item()
        return cls(cp, cfg, doc["diameters"], size_params, folder, specialists=loaded)

    # -- diameter ---------------------------------------------------------------------------

    def _eval(self, image, cp=None, **kw):
        """cellpose's ``eval`` of ``cp`` (default: the all-type network) with this config."""
        inf = self.config.inference
        kw.setdefault("augment", inf.augment)
        return (cp or self.cp).eval(image, channels=CHANNELS, batch_size=inf.batch_size,
                                    tile_overlap=inf.tile_overlap, bsize=self.config.train.bsize,
                                    normalize=_normalize_params(), **kw)

    def size_model_diameter(self, image: np.ndarray) -> float:
        """The size model's diameter estimate (px) of an image; NaN without a size model.

        Step 1: the style vector of the image at its native scale (the scale cellpose's
        ``train_size`` learned from) -> ``exp(A . (style - smean) + log(diam_mean) + ymean)``,
        at least 5 (cellpose's formula). Step 2 (``size_model.refine``, like cellpose's
        ``SizeModel.eval``): segment at that diameter with cellpose's default thresholds and
        return the median diameter of the masks (step 1's value when there are none).
        """
        if self.size_params is None:
            return float("nan")
        p = self.size_params
        style = np.asarray(self._eval(image, rescale=1.0, resample=False, compute_masks=False,
                                      augment=self.config.size_model.augment)[-1], np.float32)
        d = float(np.exp(p["A"] @ (style - p["smean"]).T + np.log(p["diam_mean"]) + p["ymean"]))
        d = max(5.0, d)
        if self.config.size_model.refine and math.isfinite(d):
            from cellpose import utils

            masks = self._eval(image, rescale=self.diam_mean / d, resample=False, interp=False,
                               augment=self.config.size_model.augment)[0]
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)  # no masks: mean of nothing
                dm = float(utils.diameters(masks)[0])
            if math.isfinite(dm) and dm > 0:
                d = dm
        return d

    def estimate_diameter(self, image: np.ndarray, cell_type: str) -> tuple[float, str]:
        """``(diameter in px, source)``; source is ``config``, ``median``, ``size_model`` or
        ``median (size model gave X)`` when the estimate was rejected."""
        check_cell_type(cell_type)
        setting = self.config.cell_types[cell_type].diameter
        if isinstance(setting, float):
            return setting, "config"
        median = self.diameters[cell_type]
        if setting == "median" or self.size_params is None:
            return median, "median"
        d = self.size_model_diameter(image)
        r = self.config.size_model.max_ratio
        if not (math.isfinite(d) and median / r <= d <= median * r):
            return median, f"median (size model gave {d:.1f})"
        return d, "size_model"

    # -- prediction -------------------------------------------------------------------------

    def predict_raw(self, image: np.ndarray, cell_type: str) -> dict:
        """Network outputs of one image, before any threshold.

        Returns ``{"dP": (2, h, w) float32 flows (Y, X), "cellprob": (h, w) float32 logits,
        "style": (256,) float32, "diameter": float, "diameter_source": str, "rescale": float
        (diam_mean / diameter), "niter": float (cellpose's default dynamics iterations),
        "shape": (H, W)}``; ``(h, w) = (H, W)`` when ``inference.resample`` (else the rescaled
        size). A type with a specialist gets its flows, cell probabilities and style.
        """
        image = _check_image(image)
        diameter, source = self.estimate_diameter(image, cell_type)
        _, flows, style = self._eval(image, cp=self.specialists.get(cell_type), diameter=diameter,
                                     resample=self.config.inference.resample, compute_masks=False)
        rescale = self.diam_mean / diameter
        return {"dP": np.asarray(flows[1], np.float32), "cellprob": np.asarray(flows[2], np.float32),
                "style": np.asarray(style, np.float32), "diameter": float(diameter),
                "diameter_source": source, "rescale": float(rescale),
                "niter": 200.0 / rescale if self.config.inference.resample else 200.0,
                "shape": tuple(image.shape)}

    def postprocess_raw(self, raw: dict, params: CellTypeConfig | dict | str) -> np.ndarray:
        """(H, W) int32 labels ``1..N`` from :meth:`predict_raw`'s output by cellpose's dynamics
        (:func:`labels_from_raw` with this model's ``inference.max_size_fraction`` and device).

        ``params``: a cell type name (its config section), a :class:`CellTypeConfig`, or a dict
        of :class:`CellTypeConfig` keys (checked; missing keys take the class defaults).
        """
        if isinstance(params, str):
            check_cell_type(params)
            params = self.config.cell_types[params]
        return labels_from_raw(raw, params, self.config.inference.max_size_fraction, self.cp.device)

    def predict(self, image: np.ndarray, cell_type: str) -> np.ndarray:
        """(H, W) int32 label image (0 = background, 1..N, non-overlapping) of an (H, W) uint8
        image of a known cell type."""
        return self.postprocess_raw(self.predict_raw(image, cell_type), cell_type)
