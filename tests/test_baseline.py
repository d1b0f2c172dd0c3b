"""Tests of kit.models.baseline: output format, disks on noise, model folder round trip."""
import dataclasses
import json

import cv2
import numpy as np
import pytest

from kit import CELL_TYPES
from kit.models.baseline import DEFAULT_PARAMS, BaselineModel, BaselineParams, predict_labels

CENTERS = [(40, 40), (40, 120), (40, 200), (120, 40), (120, 120), (120, 200), (170, 260)]
RADIUS = 11  # area ~380 px: a cort-sized cell


def _disks(seed=0, dark=15.0, halo=25.0):
    """(200, 300) uint8 flat noisy image of "cells" and its (200, 300) int32 labels.

    Each cell is a disk ``dark`` gray levels below the background with a 2 px bright halo ring
    ``halo`` levels above it just outside (phase-contrast-like); noise sd 4, blur 0.7.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((200, 300), np.int32)
    ring = np.zeros((200, 300), np.uint8)
    for i, (y, x) in enumerate(CENTERS, 1):
        cv2.circle(labels, (x, y), RADIUS, i, -1)
        cv2.circle(ring, (x, y), RADIUS + 2, 1, 2)
    img = 128.0 + rng.normal(0, 4, labels.shape)
    img[labels > 0] -= dark
    img[ring > 0] += halo
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def _matched(gt, pred, t=0.5):
    """Number of GT instances with a predicted instance of IoU > t."""
    n = 0
    for g in range(1, gt.max() + 1):
        m = gt == g
        for p in np.unique(pred[m]):
            if p == 0:
                continue
            q = pred == p
            if (m & q).sum() / (m | q).sum() > t:
                n += 1
                break
    return n


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_output_format(cell_type):
    img, _ = _disks()
    out = predict_labels(img, cell_type)
    assert out.dtype == np.int32 and out.shape == img.shape
    assert out.min() == 0
    # one label per pixel, so non-overlapping by construction; labels are 1..N
    assert set(np.unique(out)) == set(range(out.max() + 1))


def test_empty_and_flat_images():
    for img in (np.zeros((64, 80), np.uint8), np.full((64, 80), 128, np.uint8)):
        out = predict_labels(img, "cort")
        assert out.shape == (64, 80) and out.dtype == np.int32 and out.max() == 0


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_detects_disks(cell_type):
    img, gt = _disks()
    pred = predict_labels(img, cell_type)
    assert _matched(gt, pred) >= len(CENTERS) - 1
    assert pred.max() <= len(CENTERS) + 2


def test_detects_plain_dark_disks_with_custom_params():
    img, gt = _disks(1, dark=35.0, halo=0.0)
    p = BaselineParams(min_distance=8, min_area=50, max_area=5000, shrink=1)
    assert _matched(gt, predict_labels(img, "astro", p)) >= len(CENTERS) - 1


def test_model_save_load_round_trip(tmp_path):
    params = dict(DEFAULT_PARAMS)
    params["astro"] = dataclasses.replace(params["astro"], min_distance=11, threshold_k=0.9)
    model = BaselineModel(params)
    d = model.save(tmp_path / "m")
    doc = json.loads((d / "model.json").read_text())
    assert doc["type"] == "baseline" and set(doc["params"]) == set(CELL_TYPES)
    loaded = BaselineModel.load(d)
    assert loaded.params == model.params
    img, _ = _disks()
    np.testing.assert_array_equal(loaded.predict(img, "astro"),
                                  predict_labels(img, "astro", params["astro"]))
    assert [p.name for p in d.iterdir()] == ["model.json"]


def test_load_rejects_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        BaselineModel.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"type": "cellpose", "params": {}}))
    with pytest.raises(ValueError, match="'cellpose'"):
        BaselineModel.load(tmp_path)
    doc = {"type": "baseline", "params": {ct: p.to_dict() for ct, p in DEFAULT_PARAMS.items()}}
    doc["params"]["cort"]["sigma"] = 3
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"\['sigma'\].*bg_sigma"):
        BaselineModel.load(tmp_path)


def test_unknown_cell_type_names_valid_types():
    img, _ = _disks()
    with pytest.raises(ValueError, match=r"'hela'.*\['shsy5y', 'astro', 'cort'\]"):
        predict_labels(img, "hela")
    with pytest.raises(ValueError, match="'hela'"):
        BaselineModel().predict(img, "hela")
    with pytest.raises(ValueError, match="'hela'"):
        BaselineModel({**DEFAULT_PARAMS, "hela": DEFAULT_PARAMS["cort"]})


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        predict_labels(np.zeros((8, 8), np.float32), "cort")
    with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
        predict_labels(np.zeros((8, 8, 3), np.uint8), "cort")
    with pytest.raises(ValueError, match="'triangle'"):
        BaselineParams(threshold_method="triangle")
    with pytest.raises(ValueError, match="min_area"):
        BaselineParams(min_area=100, max_area=50)
