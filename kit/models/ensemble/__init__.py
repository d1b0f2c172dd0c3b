"""Ensembles and test-time augmentation (TTA) of model folders, fused per image.

Two fusions, one per kind of raw output:

* **Detections** (Mask R-CNN, :class:`kit.postprocess.Detections`): weighted box fusion by the
  ``ensemble-boxes`` package (:func:`fuse_detections`). Boxes are normalised to [0, 1] and
  clustered per class by ensemble-boxes' own ``find_matching_box_fast`` / ``get_weighted_box``
  (the clustering loop of its ``weighted_boxes_fusion``, replayed so that the members of each
  fused box are known; the fused boxes and scores equal the package's, tested). The fused
  box's ``M x M`` mask is the weighted mean of its members' masks, each resampled from its own
  box into the fused box (one bilinear resampling of ``M x M`` grids, weights = score x
  member weight, as for the box coordinates): only fused detections get a mask, never an
  ``N x H x W`` stack. Then :func:`kit.postprocess.postprocess` paints the fused detections.
* **Label images** (Cellpose, the baseline, a postprocessed detector, ...): an instance-level
  vote (:func:`vote_labels`). Instances of the voters are matched by IoU > ``match_iou`` to a
  cluster's anchor (the first voter's instance that opened it); a cluster is kept when the
  weight of its voters is >= ``min_support`` x the total voter weight (with unit weights and M
  voters: found by at least ``ceil(min_support * M)`` of them); its mask is the pixel vote:
  pixels covered by >= ``pixel_vote`` x the cluster's weight. Clusters are painted by
  decreasing support (ties: anchor order), pixels already painted are not repainted.

:func:`combine` does both for one image: all detection sources are fused and painted into
one label image that votes with the weight of the detection members; label sources vote
with their own weights. With one voter the vote returns that voter's label image.

TTA (:data:`TRANSFORMS`): the eight flips / rotations by 90 degrees (the dihedral group),
each "transpose, then flip rows, then flip columns". :func:`tta_apply` transforms an image;
:func:`tta_invert_labels` and :func:`tta_invert_detections` map a prediction of the
transformed image back exactly (boxes in continuous pixel coordinates, masks by flipping /
transposing the ``M x M`` grid, label images by the inverse array view).

The ``ensemble`` model folder (:class:`EnsembleModel`, the family in
:mod:`kit.models.ensemble.family`, registered in :mod:`kit.models.registry`). Members are
fused as detections or vote as label images according to their family's ``fusion``:
``model.json`` = ``{"type": "ensemble", "config": {...}}`` with :class:`EnsembleConfig`
(members by path, relative to the ensemble folder or absolute, with weights; TTA views;
the post-processing of fused detections; per-cell-type fusion parameters, which
``python -m kit.tune`` tunes). Each member view's weight is the member's weight divided by
the number of views. Make one with
``python -m kit.ensemble --out DIR --member MODEL_DIR[:WEIGHT] ... [--tta id,hflip]``.

Modules: ``tta``, ``fusion`` (weighted box fusion), ``vote`` (instance vote), ``config``,
``model`` (the folder, :func:`combine`, :func:`make_ensemble`), ``family``.
"""
from __future__ import annotations

from kit.models.ensemble.config import EnsembleConfig, EnsembleTypeParams, Member
from kit.models.ensemble.fusion import fuse_detections
from kit.models.ensemble.model import EnsembleModel, combine, make_ensemble
from kit.models.ensemble.tta import (TRANSFORMS, tta_apply, tta_invert_detections,
                                     tta_invert_labels)
from kit.models.ensemble.vote import vote_labels

__all__ = ["TRANSFORMS", "tta_apply", "tta_invert_labels", "tta_invert_detections",
           "fuse_detections", "vote_labels", "combine", "Member", "EnsembleTypeParams",
           "EnsembleConfig", "EnsembleModel", "make_ensemble"]
