"""Cellpose 3.x (CPnet flows + SizeModel) as a kit model: fit on a fold, one model folder, inference.

Training (:func:`fit`)
    * Ground truth -> one label image per image by :func:`training_labels`: train.csv masks
      overlap, a label image cannot, so masks are painted **largest first, smallest last** (a
      smaller mask wins where it overlaps a larger one, so small cells are not swallowed; equal
      areas keep file order, the later one winning). A mask covered entirely by smaller ones
      disappears.
    * Images go through cellpose's own preprocessing (:func:`net_input`: channels ``[0, 0]``,
      1st-99th percentile normalisation), labels through ``dynamics.labels_to_flows``; images with
      fewer than ``train.min_train_masks`` masks are skipped (cellpose's rule).
    * The epoch loop is ours, on cellpose's network, augmentation
      (``transforms.random_rotate_and_resize``, cells rescaled to ``diam_mean``) and loss
      (:func:`seg_loss`, the same as cellpose 3.1's). Owning the loop gives exact resume: every
      ``train.save_every`` epochs ``checkpoint.pt`` holds the weights, the optimiser state and the
      epoch; the random streams are re-seeded from ``(train.seed, epoch)`` at every epoch, so an
      interrupted run resumed from its checkpoint computes the same weights as one uninterrupted
      run. Learning rates: :func:`learning_rates` (cellpose 3.1's schedule).
    * The network is cellpose's CPnet, ``width`` channels at its first level
      (:func:`~kit.models.cellpose.network.cpnet_nbase`: ``[2, w, 2w, 4w, 256]``; cellpose's
      own is 32, which its published weights need; the CPU demo recipe trains 16).
    * Optional first stage: ``train.livecell_epochs`` epochs on extra images (LIVECell via
      ``kit.data.read_coco``), then ``train.epochs`` on the competition images, with a fresh
      optimiser and schedule per stage.
    * Then the BatchNorm statistics are recomputed with the final weights
      (:func:`recalibrate_batchnorm`; after a short run the running statistics trail the weights
      and the eval-mode network is far off), the SizeModel is fitted on the final network by
      cellpose's ``train.train_size`` recipe (style vector -> log diameter, ridge regression;
      our loop, reading the images per batch), and the per-cell-type median diameter of the
      training images is kept as the fallback.
    * Optional specialists (``train.specialize``, :mod:`kit.models.cellpose.specialists`): the
      final network fine-tuned on one cell type's images alone, kept only if it beats the
      all-type network on that type's validation images; images of that type then get their
      flows from it.
    * Memory does not grow with the images: their network inputs, flows and label images are
      computed once into an on-disk cache (:func:`~kit.models.cellpose.data.targets_cache_dir`,
      keyed by the image's bytes, masks and the settings) and read per batch.

Inference (:class:`CellposeSegmenter`)
    ``predict(image, cell_type)`` = ``postprocess_raw(predict_raw(image, cell_type), cell_type)``:
    ``predict_raw`` runs the network once at the image's diameter and returns the raw outputs
    (flows, cell probability, style vector, the diameter and where it came from);
    ``postprocess_raw`` runs cellpose's dynamics with the cell type's thresholds. A tuning step can
    cache ``predict_raw`` and search thresholds with ``postprocess_raw`` alone.
    The diameter of an image (per cell type, ``cell_types.<type>.diameter``): a fixed number, the
    training-fold ``median`` of that cell type, or ``size_model``: the style vector of the image at
    its native scale (the scale ``train_size`` learned from) through the regression, refined like
    cellpose's ``SizeModel.eval`` by segmenting at that estimate and measuring the masks; an
    estimate that is not finite or lies outside ``[median / max_ratio, median * max_ratio]`` falls
    back to the median. Output: ``(H, W)`` int32 labels ``1..N``, non-overlapping.

The model folder
    ``model.json`` (``{"type": "cellpose", "config", "diameters", "training", "versions"}``; its
    ``config`` is what inference reads), ``cellpose_net`` (CPnet ``state_dict``, cellpose's own
    format: ``cellpose --pretrained_model`` reads it) and ``cellpose_net_size.npy`` (cellpose's
    size-model format), ``cellpose_net_<type>`` (a kept specialist, listed under ``specialists``),
    ``config.yaml`` (verbatim copy of the YAML used), ``epochs.csv`` (one row per epoch: stage,
    learning rate, losses, seconds), ``checkpoint.pt`` (for ``--resume``).

Downloads never happen: the network is built with ``pretrained_model=False`` and weights are
loaded by us from paths checked to exist (cellpose 3.x silently tries to download a built-in
model when handed a path that does not exist).

Modules: ``config`` (the YAML sections, file names), ``data`` (label images, network input,
the in-memory image set), ``network`` (random-init CPnet, loading weights files), ``steps``
(loss, schedule, crops, one epoch, BatchNorm recalibration), ``train`` (:func:`fit` and its
phases), ``specialists`` (``train.specialize``), ``model`` (:class:`CellposeSegmenter`, :func:`labels_from_raw`),
``family`` (the model-family protocol).
"""
from __future__ import annotations

import warnings

# Two notices cellpose 3 triggers on every import / every mask computation with torch 2.14;
# neither says anything about the kit's use (no sparse tensor is built by hand, no script is saved).
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled",
                        category=UserWarning)
warnings.filterwarnings("ignore", message=r"`torch.jit.script_method` is deprecated",
                        category=FutureWarning)

from kit.models.cellpose.config import (CHECKPOINT, CONFIG_COPY, DEFAULT_CONFIG, EPOCH_LOG,
                                        SIZE_MODEL, WEIGHTS, CellposeConfig, CellTypeConfig,
                                        InferenceConfig, SizeModelConfig, TrainConfig,
                                        load_config, renamed_keys)
from kit.models.cellpose.data import net_input, training_labels
from kit.models.cellpose.model import CellposeSegmenter, labels_from_raw
from kit.models.cellpose.steps import learning_rates, recalibrate_batchnorm, seg_loss
from kit.models.cellpose.train import fit

__all__ = [
    "CellposeConfig", "TrainConfig", "SizeModelConfig", "InferenceConfig", "CellTypeConfig",
    "DEFAULT_CONFIG", "WEIGHTS", "SIZE_MODEL", "CHECKPOINT", "EPOCH_LOG", "CONFIG_COPY",
    "load_config", "renamed_keys", "training_labels", "net_input", "seg_loss", "learning_rates",
    "recalibrate_batchnorm", "fit", "CellposeSegmenter", "labels_from_raw",
]
