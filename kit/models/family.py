"""The model-family protocol: what every family (baseline, cellpose, maskrcnn, ensemble, ...)
implements so that ``kit.train``, ``kit.predict``, ``kit.tune`` and ``kit.ensemble`` work with
it without knowing which family it is.

A family is one :class:`ModelFamily` object, registered by name in :mod:`kit.models.registry`;
its name is the ``type`` in a model folder's ``model.json``. A *model* is what the family's
:meth:`~ModelFamily.load` returns; it has ``predict(image, cell_type) -> labels``.

Conventions of every method:

* ``image``: (H, W) uint8 grayscale; ``cell_type``: one of :data:`kit.CELL_TYPES`;
* ``labels``: (H, W) int32 label image, 0 = background, instances 1..N, non-overlapping;
* ``raw``: what :meth:`~ModelFamily.predict_raw` returns: the model's output *before* its
  post-processing, stored by :func:`save_raw` in the format :attr:`~ModelFamily.raw_format`
  (``"detections"``: :class:`kit.postprocess.Detections`; ``"arrays"``: a dict of numpy
  arrays and scalars; ``"labels"``: a label image, nothing left to post-process);
* ``state``: a JSON mapping of the model's current post-processing settings
  (:meth:`~ModelFamily.tuning_state`), all a cache of raw outputs needs besides the raws;
* ``params``: the flat mapping ``{parameter: value}`` of one cell type, the keys being
  :meth:`~ModelFamily.tunable_params` (the search varies them, each over its candidate values
  in :attr:`~ModelFamily.grids`).

The one law tying them together (tested for every family): for every image and cell type,
``predict(model, image, ct) == postprocess_raw(predict_raw(model, image, ct), ct,
current_params(state, ct), state)`` with ``state = tuning_state(model)``; and after
``apply_tuned(model, tuned_document(state, {ct: params}))`` the model predicts what
``postprocess_raw`` rendered with ``params``. So a search on cached raws finds exactly what
the model will do.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

__all__ = ["ModelFamily", "FitOptions", "RAW_FORMATS", "save_raw", "load_raw", "cell_type_sections"]

RAW_FORMATS = ("detections", "arrays", "labels")


@dataclass(frozen=True)
class FitOptions:
    """How :meth:`ModelFamily.fit` runs, the same words for every family.

    ``config``: the family's config YAML path, a config object of the family, or None (the
    family's default). ``epochs``: overrides the config's epochs. ``pretrained``: initial
    weights file or model folder (never downloaded). ``resume``: continue from the run
    folder's checkpoint. ``time_budget_s``: stop training after this many seconds (checkpoint
    kept; ``resume`` continues). ``stop_after_epochs``: stop after this many epochs of this call
    (families that count epochs). ``livecell``: :class:`kit.data.ImageRecord` of an extra
    pretraining stage (LIVECell, ``cell_type`` None). ``progress``: show progress bars.
    """

    config: Any = None
    epochs: int | None = None
    pretrained: Path | None = None
    resume: bool = False
    time_budget_s: float | None = None
    stop_after_epochs: int | None = None
    livecell: Sequence = ()
    progress: bool = True


def _no_log(event: str, **fields) -> None:
    pass


class ModelFamily(ABC):
    """One model family (module docstring). Subclasses implement :meth:`fit` and :meth:`load`,
    set the class attributes and override what they do differently; the defaults describe a
    family whose raw output is already the label image and which has nothing to tune."""

    name: ClassVar[str] = ""
    #: ``kit.train`` offers it (an ensemble is assembled, not trained)
    trainable: ClassVar[bool] = True
    #: :meth:`fit` trains in several processes under torchrun (:mod:`kit.distributed`): every
    #: rank calls it, rank 0 alone writes and gets the model, the others get None
    distributed: ClassVar[bool] = False
    #: how an ensemble fuses members of this family: "detections" (weighted box fusion of
    #: :class:`kit.postprocess.Detections`) or "labels" (instance vote of label images)
    fusion: ClassVar[str] = "labels"
    #: the format of :meth:`predict_raw`'s output (:data:`RAW_FORMATS`)
    raw_format: ClassVar[str] = "labels"
    #: candidate values of each tunable parameter (``kit.tune search --grid`` replaces one)
    grids: ClassVar[dict] = {}
    #: the top-level keys of the family's tuned YAML besides ``model_type``
    tuned_keys: ClassVar[tuple] = ()

    # -- training ---------------------------------------------------------------------------

    def load_config(self, path):
        """The family's config read from ``path`` (None: its default), checked: ConfigError /
        ValueError naming the file and key. A family without a config refuses a path."""
        if path is not None:
            raise ValueError(f"--config {path}: the {self.name} model takes no config")
        return None

    def wants_validation(self, config) -> bool:
        """Whether :meth:`fit` with this config (:meth:`load_config`'s result) uses validation
        images; only then does ``kit.train`` set an inner split of the training images aside
        (the others train on all of them)."""
        return False

    @abstractmethod
    def fit(self, train: Sequence, val: Sequence, out: Path, options: FitOptions,
            log: Callable = _no_log):
        """Train on ``train`` (:class:`kit.data.ImageRecord` with RLEs and cell types), using
        ``val`` (an inner split of the training images, never the images a score is reported
        on) for monitoring and checkpoint selection; write the model folder ``out`` and return
        the loaded model. ``log(event, **fields)`` receives progress events (``train.log``).
        A family that is not trained (``trainable = False``) raises a ValueError saying how
        its models are made."""

    def memory_plan(self, config, train: Sequence, val: Sequence, livecell: Sequence = ()):
        """The :class:`kit.models.memory_plan.MemoryPlan` of a :meth:`fit` with this config
        (:meth:`load_config`'s result) on these records, estimated before it runs. The default:
        a family without a network, holding its records."""
        from kit.models.memory_plan import LIBS_MB, MemoryPlan, records_mb

        return MemoryPlan(self.name, "cpu", records_mb([*train, *val, *livecell]),
                          LIBS_MB.get(self.name, LIBS_MB["baseline"]), basis="no network")

    # -- serving ----------------------------------------------------------------------------

    @abstractmethod
    def load(self, folder: Path):
        """The model stored in ``folder`` (its ``model.json`` has ``type`` = :attr:`name`)."""

    def predict(self, model, image: np.ndarray, cell_type: str) -> np.ndarray:
        """(H, W) int32 label image of one image."""
        return model.predict(image, cell_type)

    def predict_raw(self, model, image: np.ndarray, cell_type: str,
                    min_score: float | None = None):
        """The model's output before post-processing (format :attr:`raw_format`).
        ``min_score``: a family whose raws are scored detections may leave out those below it
        (an ensemble's fusion drops them anyway)."""
        return self.predict(model, image, cell_type)

    def postprocess_raw(self, raw, cell_type: str, params: dict, state: dict) -> np.ndarray:
        """(H, W) int32 label image of a raw output rendered with ``params`` (no network)."""
        return np.asarray(raw, np.int32)

    def detection_postprocess(self, model):
        """The :class:`kit.postprocess.PostprocessConfig` a model of a ``fusion = "detections"``
        family paints its detections with (an ensemble paints fused detections with the first
        detection member's)."""
        from kit.errors import ModelError

        raise ModelError(f"the {self.name} family votes with label images: it has no detection "
                         "post-processing")

    # -- tuning -----------------------------------------------------------------------------

    def tuning_state(self, model) -> dict:
        """JSON mapping of the model's post-processing settings (module docstring)."""
        return {}

    def tunable_params(self, state: dict) -> list[str]:
        """The parameters a search varies for a model in ``state``."""
        return list(self.grids)

    def grid_name(self, param: str) -> str:
        """The :attr:`grids` entry holding ``param``'s candidates (a family whose parameters
        come in numbered series maps them onto one grid)."""
        return param

    def current_params(self, state: dict, cell_type: str) -> dict:
        """The flat parameters of ``cell_type`` the model uses now (the "before" of a search)."""
        return {}

    def valid(self, params: dict, state: dict, cell_type: str) -> bool:
        """Whether a candidate parameter set of ``cell_type`` is admissible."""
        return True

    def tuned_document(self, state: dict, best: dict) -> dict:
        """The tuned YAML mapping (``model_type`` + :attr:`tuned_keys`): the model's settings
        with the cell types of ``best`` (``{cell_type: params}``) replaced."""
        raise ValueError(f"a {self.name} model has nothing to tune")

    def apply_tuned(self, model, doc: dict, where: str) -> None:
        """Apply a checked tuned mapping (:func:`kit.models.tuned.read_tuned`) to ``model`` in
        place; errors name ``where``."""

    # -- tuning caches (one raw output per image; an ensemble has several) -------------------

    def cache_sources(self, model) -> list[dict]:
        """The raw outputs cached per image, each ``{"format": ...}`` plus what the family
        needs to tell them apart."""
        return [{"format": self.raw_format}]

    def raw_outputs(self, model, image: np.ndarray, cell_type: str) -> list:
        """The raw outputs of one image, one per :meth:`cache_sources` entry."""
        return [self.predict_raw(model, image, cell_type)]

    def render(self, raws: list, state: dict, cell_type: str, params: dict, key=None) -> np.ndarray:
        """The label image of one cached image: its ``raws`` (one per source) with ``params``.
        ``key``: a hashable name of the cached image, for families that memoise work shared
        by candidates."""
        return self.postprocess_raw(raws[0], cell_type, params, state)


def cell_type_sections(doc: dict, key: str, where: str) -> dict:
    """``doc[key]`` of a tuned document: ``{cell type: {setting: value}}``, checked to name known
    cell types only (a ValueError naming ``where`` and ``key`` otherwise)."""
    from kit import CELL_TYPES

    sections = doc.get(key) or {}
    unknown = [k for k in sections if k not in CELL_TYPES]
    if unknown:
        raise ValueError(f"{where}: {key}: unknown cell type(s) {unknown}; valid {list(CELL_TYPES)}")
    return {ct: dict(v or {}) for ct, v in sections.items()}


# ---------------------------------------------------------------------------------------------
# Raw outputs on disk (``.npz``, written through kit.atomic)


def save_raw(fmt: str, raw, path: Path) -> None:
    """Write one raw output of format ``fmt`` (:data:`RAW_FORMATS`) to ``path`` (.npz)."""
    from kit.atomic import atomic_open

    if fmt == "detections":
        raw.save(path)
        return
    if fmt == "arrays":
        arrays = {k: np.asarray(v) for k, v in raw.items()}
    elif fmt == "labels":
        arrays = {"labels": np.asarray(raw, np.int32)}
    else:
        raise ValueError(f"unknown raw format {fmt!r}; known: {RAW_FORMATS}")
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_raw(fmt: str, path: Path):
    """Read what :func:`save_raw` wrote: Detections, a dict (0-d arrays back to Python
    scalars, ``shape`` back to a tuple) or a label image."""
    if fmt == "detections":
        from kit.postprocess import Detections

        return Detections.load(path)
    if fmt not in RAW_FORMATS:
        raise ValueError(f"unknown raw format {fmt!r}; known: {RAW_FORMATS}")
    with np.load(path) as z:
        if fmt == "labels":
            return z["labels"]
        out = {}
        for k in z.files:
            v = z[k]
            if v.ndim == 0:
                v = v.item()
            elif k == "shape":
                v = tuple(int(s) for s in v)
            out[k] = v
        return out
