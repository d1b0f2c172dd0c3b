"""kit.models.ensemble: TTA inverses, WBF through ensemble-boxes, mask averaging, instance vote, folders."""
import json

import numpy as np
import pytest
from ensemble_boxes import weighted_boxes_fusion
from scipy import ndimage

from kit.models.ensemble import (TRANSFORMS, EnsembleConfig, EnsembleModel, EnsembleTypeParams,
                                 Member, combine, fuse_detections, tta_apply,
                                 tta_invert_detections, tta_invert_labels, vote_labels)
from kit.models.ensemble.fusion import _wbf_clusters
from kit.postprocess import Detections, PostprocessConfig, TypeParams, postprocess
from tests.conftest import run_module

M = 8  # mask grid of the hand-made detectors


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---------------------------------------------------------------------------------------------
# hand-made "models"


def squares_image(shape=(60, 90), n=6, seed=0):
    """uint8 image of non-touching textured M x M squares on a zero background."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.uint8)
    placed = 0
    while placed < n:
        r, c = rng.integers(1, shape[0] - M - 1), rng.integers(1, shape[1] - M - 1)
        if img[r - 1:r + M + 1, c - 1:c + M + 1].any():
            continue
        img[r:r + M, c:c + M] = rng.integers(30, 256, (M, M))
        placed += 1
    return img


class SquareDetector:
    """An exact detector of :func:`squares_image`'s squares: box = the square, M x M mask =
    its pixels / 255, score = mean / 255, class = sum of its pixels % 3 (the same in every view)."""

    def predict_raw(self, image, score_thresh=None, cell_type=None):
        lab, n = ndimage.label(image > 0)
        boxes, scores, classes, masks = [], [], [], []
        for sl in ndimage.find_objects(lab):
            crop = image[sl].astype(np.float32) / 255
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            scores.append(crop.mean())
            classes.append(int(image[sl].astype(np.int64).sum()) % 3)
            masks.append(crop)
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores, classes,
                          np.array(masks, np.float32).reshape(-1, M, M), image.shape)

    def predict(self, image, cell_type):
        return ndimage.label(image > 0)[0].astype(np.int32)


def sort_dets(d):
    order = np.lexsort((d.boxes[:, 1], d.boxes[:, 0]))
    return d.take(order)


# ---------------------------------------------------------------------------------------------
# TTA


def test_tta_views_are_the_numpy_rotations_and_invert_exactly():
    img = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert np.array_equal(tta_apply("rot90", img), np.rot90(img, 1))
    assert np.array_equal(tta_apply("rot180", img), np.rot90(img, 2))
    assert np.array_equal(tta_apply("rot270", img), np.rot90(img, 3))
    assert np.array_equal(tta_apply("hflip", img), img[:, ::-1])
    assert np.array_equal(tta_apply("vflip", img), img[::-1])
    assert len({tta_apply(n, img).tobytes() + bytes(tta_apply(n, img).shape) for n in TRANSFORMS}) == 8
    for name in TRANSFORMS:
        assert np.array_equal(tta_invert_labels(name, tta_apply(name, img)), img), name
    with pytest.raises(ValueError, match="unknown TTA transform 'flip'.*valid"):
        tta_apply("flip", img)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_tta_inverse_of_detections_and_labels_is_exact(name):
    """The exact detector on the transformed image, mapped back, equals it on the original."""
    img = squares_image()
    model = SquareDetector()
    ref = sort_dets(model.predict_raw(img))
    back = sort_dets(tta_invert_detections(name, model.predict_raw(tta_apply(name, img))))
    assert back.image_shape == img.shape
    np.testing.assert_array_equal(back.boxes, ref.boxes)
    np.testing.assert_array_equal(back.masks, ref.masks)
    np.testing.assert_array_equal(back.scores, ref.scores)
    # pasted: the same label image
    low = PostprocessConfig(cort=TypeParams(score=0.0, nms=1.0, pixel=0.05))
    np.testing.assert_array_equal(postprocess(back, "cort", low), postprocess(ref, "cort", low))
    labels = tta_invert_labels(name, model.predict(tta_apply(name, img), "cort"))
    assert _same_partition(labels, model.predict(img, "cort"))


def _same_partition(a, b):
    """Equal up to renumbering."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs}) and \
        ((a == 0) == (b == 0)).all()


# ---------------------------------------------------------------------------------------------
# WBF


def test_wbf_on_hand_made_boxes_has_the_known_coordinates():
    boxes = [[[0.10, 0.10, 0.30, 0.30], [0.60, 0.60, 0.80, 0.80]],
             [[0.12, 0.10, 0.32, 0.30]]]
    scores = [[0.9, 0.5], [0.6]]
    labels = [[0, 0], [0]]
    # the package itself
    b, s, lab = weighted_boxes_fusion(boxes, scores, labels, iou_thr=0.55)
    np.testing.assert_allclose(b, [[0.108, 0.10, 0.308, 0.30], [0.60, 0.60, 0.80, 0.80]], atol=1e-6)
    np.testing.assert_allclose(s, [0.75, 0.25], atol=1e-6)   # (0.9 + 0.6) / 2, 0.5 * 1 / 2
    # our replay: same numbers plus the members
    b2, s2, lab2, members = _wbf_clusters(boxes, scores, labels, [1.0, 1.0], 0.55, 0.0, "avg")
    np.testing.assert_allclose(b2, b)
    np.testing.assert_allclose(s2, s)
    assert [sorted(m) for m in members] == [[(0, 0), (1, 0)], [(0, 1)]]
    # weights 2:1 pull the box towards model 0: x0 = (1.8 * .10 + .6 * .12) / 2.4
    b3, s3, _ = weighted_boxes_fusion(boxes, scores, labels, weights=[2, 1], iou_thr=0.55)
    np.testing.assert_allclose(b3[0], [0.105, 0.10, 0.305, 0.30], atol=1e-6)
    # different classes never fuse
    _, _, _, members = _wbf_clusters(boxes, scores, [[0, 0], [1]], [1, 1], 0.55, 0.0, "avg")
    assert sorted(map(len, members)) == [1, 1, 1]


def test_wbf_replay_equals_the_package_on_random_boxes():
    rng = np.random.default_rng(1)
    for trial in range(20):
        bl, sl, ll = [], [], []
        for _ in range(3):
            n = int(rng.integers(0, 25))
            xy = rng.random((n, 2)) * 0.8
            bl.append(np.concatenate([xy, xy + rng.random((n, 2)) * 0.2 + 0.01], 1))
            sl.append(rng.random(n))
            ll.append(rng.integers(0, 3, n))
        w = rng.random(3) + 0.2
        for conf in ("avg", "max"):
            thr = float(rng.choice([0.0, 0.3]))
            ref = weighted_boxes_fusion(bl, sl, ll, weights=w, iou_thr=0.5, skip_box_thr=thr,
                                        conf_type=conf)
            got = _wbf_clusters(bl, sl, ll, w, 0.5, thr, conf)
            for r, g in zip(ref, got[:3]):
                np.testing.assert_allclose(g, r)
            assert sorted(t for m in got[3] for t in m) == sorted(
                (t, j) for t in range(3) for j in range(len(sl[t])) if sl[t][j] >= thr)


def random_dets(rng, shape=(80, 120), n=12):
    """Detections on a grid (no two boxes of a class with IoU > 0.3), random masks."""
    boxes = []
    for k in range(n):
        r, c = divmod(k, 4)
        x0, y0 = 5 + 28 * c + rng.random() * 4, 5 + 18 * r + rng.random() * 4
        boxes.append([x0, y0, x0 + 14 + rng.random() * 6, y0 + 10 + rng.random() * 5])
    return Detections(np.array(boxes, np.float32), rng.random(n).astype(np.float32) * 0.9 + 0.05,
                      rng.integers(0, 3, n), rng.random((n, 28, 28)).astype(np.float32), shape)


def test_fusing_two_identical_detections_gives_the_single_one():
    rng = np.random.default_rng(2)
    d = random_dets(rng)
    order = np.argsort(-d.scores, kind="stable")
    ref = d.take(order)
    for weights in ([1, 1], [2, 1]):
        fused = fuse_detections([d, d], weights)
        np.testing.assert_array_equal(fused.boxes, ref.boxes)
        np.testing.assert_allclose(fused.scores, ref.scores, rtol=1e-6)
        np.testing.assert_array_equal(fused.classes, ref.classes)
        np.testing.assert_allclose(fused.masks, ref.masks, atol=1e-6)
    single = fuse_detections([d])
    np.testing.assert_array_equal(single.boxes, ref.boxes)
    cfg = PostprocessConfig(shsy5y=TypeParams(score=0.2, nms=0.5, pixel=0.5))
    np.testing.assert_array_equal(postprocess(fused, "shsy5y", cfg), postprocess(d, "shsy5y", cfg))
    # combine() of two identical sources = the single model's label image
    out = combine([(d, 1.0), (d, 1.0)], [], "shsy5y", EnsembleTypeParams(), cfg)
    np.testing.assert_array_equal(out, postprocess(d, "shsy5y", cfg))


def test_fused_mask_is_the_score_weighted_mean_resampled_into_the_fused_box():
    shape = (50, 50)
    m1, m2 = np.full((1, 4, 4), 1.0, np.float32), np.full((1, 4, 4), 0.25, np.float32)
    box = np.array([[10, 10, 30, 30]], np.float32)
    a = Detections(box, [0.8], [0], m1, shape)
    b = Detections(box, [0.2], [0], m2, shape)
    f = fuse_detections([a, b], [1.0, 3.0])
    np.testing.assert_array_equal(f.boxes, box)
    # weights score x member weight: 0.8 and 0.6
    np.testing.assert_allclose(f.masks, (0.8 * 1.0 + 0.6 * 0.25) / 1.4, rtol=1e-6)
    # members shifted by 10 px: the fused box lies between them; its grid's column centres
    # x = 17.5, 22.5, 27.5, 32.5 are inside both member boxes (1) or inside one only (1/2)
    c = Detections([[20, 10, 40, 30]], [0.8], [0], m1, shape)
    g = fuse_detections([a, c], iou_thr=0.3)
    np.testing.assert_allclose(g.boxes, [[15, 10, 35, 30]])
    np.testing.assert_allclose(g.masks[0], np.tile([0.5, 1.0, 1.0, 0.5], (4, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="image_shape"):
        fuse_detections([a, Detections(box, [0.8], [0], m1, (60, 60))])


# ---------------------------------------------------------------------------------------------
# instance vote


def disks(shape, centres, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape, np.int32)
    for k, (r, c) in enumerate(centres, 1):
        out[(yy - r) ** 2 + (xx - c) ** 2 <= radius ** 2] = k
    return out


def test_vote_of_identical_label_images_is_the_single_one():
    lab = disks((60, 80), [(10, 10), (30, 40), (45, 70)], 6)
    for w in (None, [1.0, 3.0]):
        np.testing.assert_array_equal(vote_labels([lab, lab], w), lab)
    np.testing.assert_array_equal(vote_labels([lab]), lab)
    gapped = lab * 7   # labels need not be sequential
    np.testing.assert_array_equal(vote_labels([gapped, gapped, gapped]), lab)
    empty = np.zeros_like(lab)
    np.testing.assert_array_equal(vote_labels([empty, empty]), empty)


def test_vote_keeps_instances_with_enough_support_and_votes_pixels():
    a = disks((60, 80), [(15, 15), (40, 60)], 7)
    b = disks((60, 80), [(15, 16), (40, 20)], 7)        # one shared cell (shifted 1 px)
    c = disks((60, 80), [(15, 15)], 7)
    out = vote_labels([a, b, c], min_support=0.5)
    assert out.max() == 1                                # only the cell found by all three
    # pixel vote: the majority of (a, b, c) of the shared cell = a's disk (a == c)
    np.testing.assert_array_equal(out == 1, a == 1)
    # with min_support 1/3 every cell is kept; union of the matched cell's masks at pixel_vote 1/3
    loose = vote_labels([a, b, c], min_support=0.3, pixel_vote=0.3)
    assert loose.max() == 3
    np.testing.assert_array_equal(loose == 1, (a == 1) | (b == 1))
    # weights: b alone outweighs a + c
    heavy = vote_labels([a, b, c], [1, 3, 1], min_support=0.5)
    assert heavy.max() == 2 and (heavy[40, 20] > 0) and heavy[40, 60] == 0
    with pytest.raises(ValueError, match="different shapes"):
        vote_labels([a, a[:50]])
    with pytest.raises(ValueError, match="min_support must be in"):
        vote_labels([a], min_support=2.0)


# ---------------------------------------------------------------------------------------------
# the ensemble model


def test_ensemble_of_tta_views_of_an_exact_model_is_the_model():
    img = squares_image(seed=4)
    det, lab = SquareDetector(), SquareDetector()
    cfg = EnsembleConfig(members=(Member("a"), Member("b")), tta=tuple(TRANSFORMS),
                         postprocess=PostprocessConfig(cort=TypeParams(score=0.0, nms=1.0, pixel=0.05)))
    # members typed by the families whose protocol they follow: a detector fused by WBF (Mask
    # R-CNN's: predict_raw -> Detections) and a label-image model (the baseline's: predict)
    ens = EnsembleModel(cfg, [det, lab], ["maskrcnn", "baseline"])
    assert ens.fusions == ["detections", "labels"]
    dets, labels = ens.sources(img, "cort")
    assert len(dets) == len(labels) == 8 and all(abs(w - 1 / 8) < 1e-12 for _, w in dets)
    out = ens.predict(img, "cort")
    assert _same_partition(out, lab.predict(img, "cort"))
    only_det = EnsembleModel(EnsembleConfig(members=(Member("a"),), tta=tuple(TRANSFORMS),
                                            postprocess=cfg.postprocess), [det], ["maskrcnn"])
    np.testing.assert_array_equal(only_det.predict(img, "cort"),
                                  postprocess(det.predict_raw(img), "cort", cfg.postprocess))
    # no cell type given: the fused detections' class vote picks it, as for a Mask R-CNN
    np.testing.assert_array_equal(only_det.predict(img), postprocess(det.predict_raw(img), None,
                                                                      cfg.postprocess))
    with pytest.raises(ValueError, match="needs the cell type"):
        ens.predict(img)


def test_ensemble_folder_predicts_through_kit_predict(synth_dir, tmp_path):
    from kit.data import read_competition_dir
    from kit.models import load_model
    from kit.models.baseline import BaselineModel

    base = BaselineModel().save(tmp_path / "base")
    ens_dir = tmp_path / "ens"
    assert run_module("kit.ensemble", "--out", ens_dir, "--member", f"{base}:2", "--member", base,
                      "--tta", "id,hflip").returncode == 0
    doc = json.loads((ens_dir / "model.json").read_text())
    assert doc["type"] == "ensemble" and doc["config"]["members"][0] == {"path": "../base", "weight": 2.0}
    rec = read_competition_dir(synth_dir).test[0]
    image = rec.load_image()
    ens = load_model(ens_dir)
    np.testing.assert_array_equal(ens.predict(image, "cort"),
                                  vote_labels([base_pred := BaselineModel().predict(image, "cort"),
                                               tta_invert_labels("hflip", BaselineModel().predict(
                                                   tta_apply("hflip", image), "cort"))]))
    assert base_pred.max() > 0
    cell_types = tmp_path / "types.csv"
    test = read_competition_dir(synth_dir).test
    cell_types.write_text("id,cell_type\n" + "".join(f"{r.id},{r.cell_type}\n" for r in test))
    done = run_module("kit.predict", "--model", ens_dir, "--images", synth_dir / "test",
                      "--cell-types", cell_types, "--out", tmp_path / "sub.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "validated" in done.stdout
    # bad configs are clear
    bad = ens_dir / "model.json"
    doc["config"]["tta"] = ["id", "spin"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown TTA transform 'spin'"):
        load_model(ens_dir)
    doc["config"]["tta"] = ["id"]
    doc["config"]["members"] = [{"path": "nowhere"}]
    bad.write_text(json.dumps(doc))
    with pytest.raises(FileNotFoundError, match=r"members\[0\].path: no model folder"):
        load_model(ens_dir)
