"""Tests of kit.synth: format, statistics, determinism, GT artifacts, CLI."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from kit import rle, synth

from tests.conftest import REAL_SARTORIUS, needs_real_data

SMALL = (130, 176)     # 1/16 of the real area: format and artifact tests
QUARTER = (260, 352)   # 1/4 of the real area: statistics tests


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synth.make_dataset(tmp_path_factory.mktemp("synth") / "ds", 16, 4, seed=5, shape=SMALL)


def test_files_and_columns(ds):
    params = json.loads((ds / "synth_params.json").read_text())
    assert params["seed"] == 5 and params["n_train"] == 16 and params["n_test"] == 4
    for name in ("train.csv", "test_labels.csv"):
        df = pd.read_csv(ds / name, dtype={"id": str})
        assert tuple(df.columns) == synth.COLUMNS
        assert (df.width == SMALL[1]).all() and (df.height == SMALL[0]).all()
        assert df.id.str.fullmatch(r"[0-9a-f]{12}").all()
        assert df.plate_time.str.fullmatch(r"\d\dh\d\dm00s").all()
        assert df.sample_date.str.fullmatch(r"20\d\d-\d\d-\d\d").all()
        assert df.elapsed_timedelta.str.fullmatch(r"0 days \d\d:\d\d:00").all()
        assert (df.plate_time.str[:2] == df.elapsed_timedelta.str[7:9]).all()
        sample_re = r"(shsy5y|astros|cort)\[[a-z-]+\]_[A-H]\d+-\d_Vessel-\d+_Ph_\d"
        assert df.sample_id.str.fullmatch(sample_re).all()
    train = pd.read_csv(ds / "train.csv", dtype={"id": str})
    test = pd.read_csv(ds / "test_labels.csv", dtype={"id": str})
    sub = pd.read_csv(ds / "sample_submission.csv", dtype={"id": str})
    assert list(sub.columns) == ["id", "predicted"] and sub.predicted.isna().all()
    assert sorted(sub.id) == sorted(test.id.unique())
    assert not set(train.id) & set(test.id)
    assert train.id.nunique() == 16 and test.id.nunique() == 4
    for split, df in (("train", train), ("test", test)):
        assert sorted(p.stem for p in (ds / split).glob("*.png")) == sorted(df.id.unique())
        img = cv2.imread(str(ds / split / f"{df.id.iloc[0]}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == SMALL
        assert 120 < img.mean() < 136
    # one cell type per image and per sample; samples hold several images
    assert (train.groupby("id").cell_type.nunique() == 1).all()
    assert (train.groupby("sample_id").cell_type.nunique() == 1).all()
    assert train.groupby("sample_id").id.nunique().max() >= 3
    assert not list(ds.parent.glob(".ds.tmp-*"))  # the build directory is gone


def test_rles_decode_in_bounds(ds):
    df = pd.read_csv(ds / "train.csv", dtype={"id": str})
    ptr, starts, lengths = rle.parse_runs(df.annotation.tolist(), SMALL)  # raises if malformed
    assert len(ptr) == len(df) + 1 and (np.diff(ptr) > 0).all()  # no empty masks
    assert (starts + lengths <= SMALL[0] * SMALL[1]).all()


def test_type_fractions_follow_eda():
    rng = np.random.default_rng(0)
    types = synth._allocate_types(rng, 100)
    counts = {ct: types.count(ct) for ct in ("cort", "shsy5y", "astro")}
    assert counts == {"cort": 53, "shsy5y": 25, "astro": 22}  # 52.8 / 25.6 / 21.6
    assert synth._allocate_types(rng, 3).count("cort") == 1


@pytest.mark.parametrize("cell_type", ["cort", "shsy5y", "astro"])
def test_counts_and_areas_follow_eda(cell_type):
    spec = synth.SPECS[cell_type]
    rng = np.random.default_rng(1)
    scale = QUARTER[0] * QUARTER[1] / (520 * 704)
    n_images = {"cort": 40, "shsy5y": 12, "astro": 40}[cell_type]
    counts, areas = [], []
    for _ in range(n_images):
        im = synth.make_image(cell_type, rng, QUARTER)
        masks = [rle.decode(a, QUARTER) for a in im.annotations]
        counts.append(len(masks))
        areas += [int(m.sum()) for m in masks]
        assert im.labels.dtype == np.int32 and im.labels.max() == len(masks)
    assert np.mean(counts) == pytest.approx(spec.count_mean * scale, rel=0.3)
    # quarter images lose more area to the border than full-size ones (calibrated there)
    assert np.mean(areas) == pytest.approx(spec.area_mean, rel=0.2)
    assert min(areas) >= spec.area_min


def solidity_quantiles(annotations, shape) -> np.ndarray:
    """Quantiles 10/25/50/75/90 % of mask area / convex-hull area (OpenCV outer contours)."""
    values = []
    for ann in annotations:
        m = rle.decode(ann, shape).view(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
        values.append(m.sum() / max(hull, 1.0))
    return np.percentile(values, [10, 25, 50, 75, 90])


@needs_real_data
def test_astro_shapes_follow_the_real_annotations():
    real = pd.read_csv(REAL_SARTORIUS / "train.csv", usecols=["annotation", "cell_type"])
    real_q = solidity_quantiles(real.annotation[real.cell_type == "astro"], (520, 704))
    np.testing.assert_allclose(real_q, synth.ASTRO_SOLIDITY_REAL, atol=0.002)
    rng = np.random.default_rng(3)
    anns = [a for _ in range(12) for a in synth.make_image("astro", rng).annotations]
    synth_q = solidity_quantiles(anns, (520, 704))
    # as near-convex and as branched as the real astro annotations, quantile by quantile
    np.testing.assert_allclose(synth_q, real_q, atol=0.07)


def test_deterministic(tmp_path):
    a = synth.make_dataset(tmp_path / "a", 4, 2, seed=9, shape=SMALL)
    b = synth.make_dataset(tmp_path / "b", 4, 2, seed=9, shape=SMALL)
    c = synth.make_dataset(tmp_path / "c", 4, 2, seed=10, shape=SMALL)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) == 4 + 2 + 4
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()


def test_overlapping_and_hollow_masks(ds):
    df = pd.read_csv(ds / "train.csv", dtype={"id": str})
    params = json.loads((ds / "synth_params.json").read_text())
    n_overlapping_images = 0
    for iid, g in df.groupby("id"):
        stack = rle.decode_stack(g.annotation.tolist(), SMALL)
        n_overlapping_images += bool((stack.sum(0) > 1).any())
    assert n_overlapping_images >= 3
    assert params["stats"]["train"]["overlapping_masks"] > 0
    hollow = params["hollow_masks"]
    train_hollow = {i: v for i, v in hollow.items() if i in set(df.id)}
    assert train_hollow, "no hollow mask in train"
    for iid, idx in train_hollow.items():
        g = df[df.id == iid]
        assert (g.cell_type == "astro").all()
        for k in idx:
            m = rle.decode(g.annotation.iloc[k], SMALL)
            # a ring 2 px wide: a 3x3 erosion leaves little of it (of a solid cell, most)
            assert cv2.erode(m.view(np.uint8), np.ones((3, 3), np.uint8)).sum() < 0.2 * m.sum()
            assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
            filled = np.zeros(SMALL, np.uint8)
            contours, _ = cv2.findContours(m.view(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(filled, contours, -1, 1, -1)
            assert filled.sum() > 1.3 * m.sum()  # a closed ring: filling it adds the inside


def test_make_image_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'hela'.*shsy5y"):
        synth.make_image("hela", rng)
    with pytest.raises(ValueError, match=r"\(10, 10\)"):
        synth.make_image("cort", rng, (10, 10))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kit.synth", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    r = _cli(out, "--n-train", 3, "--n-test", 1, "--seed", 2, "--shape", *SMALL, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (out / "train.csv").is_file() and len(list((out / "train").glob("*.png"))) == 3
    before = (out / "train.csv").read_bytes()
    r = _cli(out, "--n-train", 2, "--n-test", 1, "--seed", 3, "--shape", *SMALL)
    assert r.returncode != 0
    assert "not empty" in r.stderr and "--overwrite" in r.stderr
    assert (out / "train.csv").read_bytes() == before  # untouched
    r = _cli(out, "--n-train", 2, "--n-test", 1, "--seed", 3, "--shape", *SMALL, "--overwrite",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len(list((out / "train").glob("*.png"))) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["cli"]  # no temp dirs left behind
