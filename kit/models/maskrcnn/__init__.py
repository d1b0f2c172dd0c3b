"""Mask R-CNN R50-FPN on torchvision, configured like the seed's detectron2 model.

One YAML config (:class:`MaskRCNNConfig`: ``model`` / ``train`` / ``postprocess`` sections;
defaults and where each number came from in ``kit/configs/maskrcnn.yaml``) builds the network
(:func:`build_network`): torchvision's ``MaskRCNN`` with

* a ResNet-{18,34,50,101} FPN backbone, norm ``bn`` (trainable, for random init: frozen BN can
  diverge to NaN from scratch: seen here in the first steps of random-init training), ``gn`` or ``frozen_bn`` (for pretrained weights),
  and ``stride_in_1x1`` (detectron2's MSRA ResNets put the stride of a stage's first block in
  the 1x1 conv, torchvision's in the 3x3 conv: same weight shapes, different function);
* anchors ``anchor_sizes`` (one size per FPN level P2-P6) x ``aspect_ratios``;
* ROIAlignV2 pooling (``roi_align_aligned``: detectron2's half-pixel-correct ROIAlign;
  torchvision's default is the legacy ``aligned=False``) with ``roi_sampling_ratio``;
* :class:`KitRoIHeads`: training computes mask targets from per-instance crops (never an
  ``N x H x W`` float tensor of all ground-truth masks); inference returns boxes, scores and
  labels only, and :meth:`KitRoIHeads.mask_probs` gives 28x28 probabilities for the boxes one
  asks for. torchvision's own inference pastes every detection into a full-size float mask
  (1000 x 520 x 704 x 4 B = 1.46 GB); this model never calls that path.
* :class:`KitTransform`: normalises; resizes at test time only (``test_min_size`` /
  ``test_max_size``); training images arrive already scaled and cropped by the data loader.

:class:`MaskRCNNModel` is the model folder (``model.json`` + ``model.pt``) with
``predict(image, cell_type)`` -> label image (:mod:`kit.postprocess`) and
``predict_raw(image)`` -> :class:`kit.postprocess.Detections` (boxes, scores, classes, 28x28
mask probabilities, in original-image coordinates) for tuning the post-processing without
the network. ``model.classes`` names the network's classes: the cell types (default; the
image's type can be their vote) or :data:`ONE_CLASS` (``[cell]``: one class for every
instance, the type given from outside, e.g. by the model folder's cell-type classifier).

Pretrained weights come only from a user-supplied file (:func:`load_pretrained`): a
torchvision Mask R-CNN checkpoint, a kit checkpoint (any class count: the class-specific head
tensors are re-initialised when the classes differ) or a detectron2 checkpoint (converted by
:mod:`kit.models.maskrcnn.detectron2_keys`). Nothing is ever downloaded.

Modules: ``config``, ``network``, ``weights``, ``detectron2_keys``, ``model``, ``data`` (training
samples), ``train`` (the training loop), ``family`` (the model-family protocol).
"""
from __future__ import annotations

from kit.models.maskrcnn.config import (DEFAULT_CONFIG_FILE, ONE_CLASS, MaskRCNNConfig,
                                        ModelConfig, TrainConfig, load_config)
from kit.models.maskrcnn.model import MaskRCNNModel
from kit.models.maskrcnn.network import build_network
from kit.models.maskrcnn.weights import load_pretrained, read_weights_file

__all__ = ["ModelConfig", "TrainConfig", "MaskRCNNConfig", "DEFAULT_CONFIG_FILE", "ONE_CLASS",
           "load_config", "build_network", "load_pretrained", "read_weights_file", "MaskRCNNModel"]
