"""Tests of kit.data: tiny competition dirs written to tmp_path, COCO json, folds, real samples."""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import CELL_TYPES, rle
from kit import data
from kit.data import DataError, ImageRecord

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
H, W = 40, 60
HEADER = ["id", "annotation", "width", "height", "cell_type", "plate_time", "sample_date",
          "sample_id", "elapsed_timedelta"]


def square(y0, x0, size, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


# Three train images. aaa has two overlapping squares (the later one must win in labels()).
TRAIN = {
    "aaa": ("shsy5y", "s1", [square(2, 3, 10), square(8, 9, 10), square(25, 40, 6)]),
    "bbb": ("shsy5y", "s1", [square(0, 0, 5)]),
    "ccc": ("astro", "s2", [square(30, 50, 10), square(0, 55, 5)]),
}
TEST_IDS = ["ttt2", "ttt1"]  # sample_submission order, not sorted


def image_of(id_, shape=(H, W)):
    rng = np.random.default_rng(sum(map(ord, id_)))
    return rng.integers(0, 256, shape, dtype=np.uint8)


def train_rows(train=TRAIN):
    """CSV rows (header first) in competition column order; row i is on line i + 1."""
    rows = [list(HEADER)]
    for id_, (ct, sample, masks) in train.items():
        for m in masks:
            rows.append([id_, rle.encode(m), str(W), str(H), ct, "11h30m00s", "2019-06-16",
                         sample, "0 days 11:30:00"])
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def make_comp(root: Path, rows=None, test_labels=False) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    write_csv(root / "train.csv", train_rows() if rows is None else rows)
    for id_ in TRAIN:
        cv2.imwrite(str(root / "train" / f"{id_}.png"), image_of(id_))
    for id_ in TEST_IDS:
        cv2.imwrite(str(root / "test" / f"{id_}.png"), image_of(id_))
    (root / "sample_submission.csv").write_text("id,predicted\n" + "".join(f"{i},\n" for i in TEST_IDS))
    if test_labels:
        write_csv(root / "test_labels.csv",
                  [HEADER, ["ttt1", rle.encode(square(1, 1, 4)), str(W), str(H), "cort", "", "",
                            "s9", ""]])
    return root


@pytest.fixture
def comp(tmp_path):
    return make_comp(tmp_path / "comp")


# --------------------------------------------------------------------------------------------
# Reading a good competition directory


def test_read_competition_dir(comp):
    c = data.read_competition_dir(comp)
    assert c.root == comp
    assert [r.id for r in c.train] == list(TRAIN)
    for r in c.train:
        ct, sample, masks = TRAIN[r.id]
        assert (r.cell_type, r.sample_id, r.shape, r.source) == (ct, sample, (H, W), "train")
        assert r.image_path == comp / "train" / f"{r.id}.png"
        assert r.rles == tuple(rle.encode(m) for m in masks)
        stack = r.stack()
        assert stack.dtype == bool and stack.shape == (len(masks), H, W)
        np.testing.assert_array_equal(stack, np.stack(masks))  # overlapping pixels kept
        img = r.load_image()
        assert img.dtype == np.uint8 and img.shape == (H, W)
        np.testing.assert_array_equal(img, image_of(r.id))
    assert [(r.id, r.rles, r.cell_type, r.sample_id, r.source) for r in c.test] == [
        ("ttt2", (), None, None, "test"), ("ttt1", (), None, None, "test")]
    assert all(r.shape == (H, W) for r in c.test)
    np.testing.assert_array_equal(c.test[1].load_image(), image_of("ttt1"))


def test_labels_later_mask_wins_on_overlap(comp):
    rec = data.read_train_csv(comp / "train.csv")[0]
    a, b, c = TRAIN["aaa"][2]
    labels = rec.labels()
    assert labels.dtype == np.int32 and labels.shape == (H, W)
    expected = np.zeros((H, W), np.int32)
    expected[a], expected[b], expected[c] = 1, 2, 3
    np.testing.assert_array_equal(labels, expected)
    assert (a & b).sum() == 16 and (labels[a & b] == 2).all()


def test_any_column_order_and_extra_columns(comp):
    rows = train_rows()
    order = [7, 4, 1, 8, 3, 0, 2]  # sample_id, cell_type, annotation, ..., id, width
    shuffled = [[row[i] for i in order] + ["x"] for row in rows]
    shuffled[0][-1] = "extra"
    write_csv(comp / "train.csv", shuffled)
    assert data.read_train_csv(comp / "train.csv") == data.read_competition_dir(comp).train
    assert [r.rles for r in data.read_train_csv(comp / "train.csv")] == [
        tuple(rle.encode(m) for m in masks) for _, _, masks in TRAIN.values()]


def test_rows_of_an_id_need_not_be_adjacent_and_empty_annotation_means_no_instance(comp):
    rows = train_rows()
    rows = [rows[0], rows[5], rows[1], rows[6], rows[2], rows[4], rows[3]]  # ccc aaa ccc aaa bbb aaa
    rows.append(["ddd", "", str(W), str(H), "cort", "", "", "s3", ""])
    cv2.imwrite(str(comp / "train" / "ddd.png"), image_of("ddd"))
    write_csv(comp / "train.csv", rows)
    recs = {r.id: r for r in data.read_train_csv(comp / "train.csv")}
    assert list(recs) == ["ccc", "aaa", "bbb", "ddd"]
    assert recs["aaa"].rles == tuple(rle.encode(m) for m in TRAIN["aaa"][2])
    assert recs["ccc"].rles == tuple(rle.encode(m) for m in TRAIN["ccc"][2])
    assert recs["ddd"].rles == () and recs["ddd"].stack().shape == (0, H, W)
    assert recs["ddd"].labels().max() == 0


def test_test_labels_fill_test_records(tmp_path):
    c = data.read_competition_dir(make_comp(tmp_path / "c", test_labels=True))
    t = {r.id: r for r in c.test}
    assert t["ttt1"].cell_type == "cort" and t["ttt1"].sample_id == "s9"
    np.testing.assert_array_equal(t["ttt1"].stack()[0], square(1, 1, 4))
    assert t["ttt2"].rles == () and t["ttt2"].cell_type is None


def test_test_ids_from_png_names_without_sample_submission(comp):
    (comp / "sample_submission.csv").unlink()
    assert [r.id for r in data.read_competition_dir(comp).test] == ["ttt1", "ttt2"]
    shutil.rmtree(comp / "test")
    assert data.read_competition_dir(comp).test == []


def test_check_images_false_does_not_decode(comp):
    (comp / "train" / "aaa.png").write_bytes(b"not a png")
    with pytest.raises(DataError):
        data.read_train_csv(comp / "train.csv")
    recs = data.read_train_csv(comp / "train.csv", check_images=False)
    assert len(recs) == 3
    assert [r.shape for r in data.read_competition_dir(comp, check_images=False).test] == [(H, W)] * 2


# --------------------------------------------------------------------------------------------
# Bad input: every error is a DataError naming file, line, field and value


def _edit(rows, line, column, value):
    rows[line - 1][HEADER.index(column)] = value
    return rows


def _errors():
    """(name, mutate(comp, rows) -> rows, expected message parts)."""
    def drop(col):
        def f(comp, rows):
            i = HEADER.index(col)
            return [r[:i] + r[i + 1:] for r in rows]
        return f

    def png(id_, content):
        def f(comp, rows):
            p = comp / "train" / f"{id_}.png"
            if content is None:
                p.unlink()
            elif isinstance(content, bytes):
                p.write_bytes(content)
            else:
                cv2.imwrite(str(p), content)
            return rows
        return f

    return [
        ("missing column", drop("cell_type"),
         ["train.csv line 1", "missing column(s) ['cell_type']", "'sample_id'"]),
        ("two missing columns", lambda c, r: drop("width")(c, drop("height")(c, r)),
         ["train.csv line 1", "['width', 'height']", "expected columns"]),
        ("unknown cell_type", lambda c, r: _edit(r, 3, "cell_type", "neuron"),
         ["train.csv line 3", "field 'cell_type'", "'neuron'", "shsy5y"]),
        ("width not an integer", lambda c, r: _edit(r, 5, "width", "60.5"),
         ["train.csv line 5", "field 'width'", "'60.5'"]),
        ("height disagrees within an id", lambda c, r: _edit(r, 4, "height", "41"),
         ["train.csv line 4", "field 'height'", "41 for id 'aaa' disagrees with 40 on line 2"]),
        ("PNG width disagrees", png("ccc", np.zeros((H, W + 2), np.uint8)),
         ["train.csv line 6", "field 'width'", "ccc.png", f"({H}, {W + 2})"]),
        ("PNG height disagrees", png("bbb", np.zeros((H - 1, W), np.uint8)),
         ["train.csv line 5", "field 'height'", "bbb.png", f"({H - 1}, {W})"]),
        ("missing PNG", png("bbb", None), ["train.csv line 5", "field 'id'", "bbb.png", "not found"]),
        ("unreadable PNG", png("aaa", b"\x89PNG garbage" * 7),
         ["train.csv line 2", "field 'id'", "aaa.png", "cannot decode"]),
        ("RLE length 0", lambda c, r: _edit(r, 4, "annotation", "5 3 20 0"),
         ["train.csv line 4", "field 'annotation'", "RLE token 3", "length 0 < 1", "'5 3 20 0'"]),
        ("RLE past the image end", lambda c, r: _edit(r, 6, "annotation", f"{H * W} 2"),
         ["train.csv line 6", "field 'annotation'", "past the image end", str(H * W)]),
        ("RLE not a number", lambda c, r: _edit(r, 7, "annotation", "1 2 x 4"),
         ["train.csv line 7", "field 'annotation'", "'x'"]),
        ("wrong number of fields", lambda c, r: r[:3] + [r[3][:-1]] + r[4:],
         ["train.csv line 4", "8 fields", "header has 9"]),
    ]


@pytest.mark.parametrize("mutate, parts", [e[1:] for e in _errors()], ids=[e[0] for e in _errors()])
def test_train_csv_errors(comp, mutate, parts):
    write_csv(comp / "train.csv", mutate(comp, train_rows()))
    with pytest.raises(DataError) as exc:
        data.read_competition_dir(comp)
    assert isinstance(exc.value, ValueError)
    msg = str(exc.value)
    for part in parts:
        assert part in msg, (part, msg)


def test_missing_train_csv_names_the_path(comp):
    (comp / "train.csv").unlink()
    with pytest.raises(DataError, match=r"comp/train\.csv: file not found"):
        data.read_competition_dir(comp)
    with pytest.raises(DataError, match="not found"):
        data.read_competition_dir(comp / "nope")


def test_sample_submission_id_without_png(comp):
    (comp / "test" / "ttt1.png").unlink()
    with pytest.raises(DataError, match=r"sample_submission\.csv line 3, field 'id': no test image"):
        data.read_competition_dir(comp)


def test_test_labels_for_an_unknown_id(tmp_path):
    root = make_comp(tmp_path / "c", test_labels=True)
    (root / "sample_submission.csv").write_text("id,predicted\nttt2,\n")
    with pytest.raises(DataError, match=r"test_labels\.csv line 2, field 'id': id 'ttt1' is not"):
        data.read_competition_dir(root)


def test_load_image_conversions_and_errors(tmp_path):
    gray = image_of("g")
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([gray] * 3))
    out = data.load_image(tmp_path / "rgb.png")
    assert out.shape == (H, W) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, gray)
    color = np.dstack([gray, gray, 255 - gray])
    cv2.imwrite(str(tmp_path / "color.png"), color)
    with pytest.raises(DataError, match="color.png: expected a grayscale image"):
        data.load_image(tmp_path / "color.png")
    cv2.imwrite(str(tmp_path / "deep.png"), gray.astype(np.uint16) * 200)
    with pytest.raises(DataError, match="expected an 8-bit image, got dtype uint16"):
        data.load_image(tmp_path / "deep.png")
    with pytest.raises(DataError, match="not found"):
        data.load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="cannot read"):
        data.load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="cannot decode"):
        data.load_image(tmp_path / "empty.png")
    rec = ImageRecord("g", tmp_path / "rgb.png", (H + 1, W), None, None)
    with pytest.raises(DataError, match=r"record 'g' says \(41, 60\)"):
        rec.load_image()
    with pytest.raises(DataError, match="has no image_path"):
        ImageRecord("g", None, (H, W), None, None).load_image()


def test_image_record_validates_and_normalises():
    r = ImageRecord("x", "a/b.png", [H, W], "cort", "s", ["1 2"], "train")
    assert r.shape == (H, W) and r.rles == ("1 2",) and r.image_path == Path("a/b.png")
    assert r.n_instances == 1
    with pytest.raises(ValueError, match="unknown cell_type 'neuron'"):
        ImageRecord("x", None, (H, W), "neuron", None)
    with pytest.raises(ValueError, match="shape must be"):
        ImageRecord("x", None, (H, 0), None, None)


# --------------------------------------------------------------------------------------------
# COCO / LIVECell json


def _poly_mask(poly, shape):
    from pycocotools import mask as cm
    return cm.decode(cm.merge(cm.frPyObjects([poly], *shape))).astype(bool)


def _coco_json(path, annotations_as_dict=False):
    shape = (30, 50)
    m1, m2, m3 = square(0, 0, 8, shape), square(5, 5, 8, shape), square(20, 40, 10, shape)
    m3[29, :] = True  # a full image row
    m3[0, 45] = True  # so a column-major run crosses a column boundary: (29, 44) -> (0, 45)
    counts, pos, val, flat = [], 0, False, m2.T.reshape(-1)  # uncompressed column-major counts
    while pos < flat.size:
        n = 0
        while pos + n < flat.size and flat[pos + n] == val:
            n += 1
        counts.append(n)
        pos, val = pos + n, not val
    poly = [2.0, 20.0, 12.0, 20.0, 12.0, 27.0, 2.0, 27.0]
    anns = [
        {"id": 11, "image_id": 7, "category_id": 3, "segmentation": rle.mask_to_coco(m1)},
        {"id": 12, "image_id": 7, "category_id": 3,
         "segmentation": {"size": list(shape), "counts": counts}},
        {"id": 13, "image_id": 7, "category_id": 3, "segmentation": rle.mask_to_coco(m3)},
        {"id": 14, "image_id": 8, "category_id": 1, "segmentation": [poly]},
    ]
    doc = {"images": [{"id": 7, "file_name": "sub/img7.tif", "height": shape[0], "width": shape[1]},
                      {"id": 8, "file_name": "img8.tif", "height": shape[0], "width": shape[1]},
                      {"id": 9, "file_name": "img9.tif", "height": shape[0], "width": shape[1]}],
           "annotations": {str(a["id"]): a for a in anns} if annotations_as_dict else anns,
           "categories": [{"id": 1, "name": "cell"}, {"id": 3, "name": "Astro"}]}
    path.write_text(json.dumps(doc))
    return path, shape, [m1, m2, m3], _poly_mask(poly, shape)


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "livecell-dict"])
def test_read_coco_all_segmentation_kinds(tmp_path, as_dict):
    path, shape, masks, poly_mask = _coco_json(tmp_path / "a.json", as_dict)
    recs = data.read_coco(path, images_dir=tmp_path)
    assert [r.id for r in recs] == ["img7", "img8", "img9"]
    r7, r8, r9 = recs
    assert r7.image_path == tmp_path / "sub" / "img7.tif" and r7.shape == shape
    assert r7.cell_type == "astro" and r8.cell_type is None and r9.cell_type is None  # 'cell'
    assert r7.sample_id is None and r7.source == "coco"
    assert r7.rles == tuple(rle.encode(m) for m in masks)
    np.testing.assert_array_equal(r7.stack(), np.stack(masks))  # overlapping m1/m2 kept
    assert r8.rles == (rle.encode(poly_mask),) and poly_mask.sum() > 50
    assert r9.rles == ()
    recs = data.read_coco(path, cell_type="cort", source="livecell")
    assert {r.cell_type for r in recs} == {"cort"} and recs[0].image_path is None
    assert recs[0].source == "livecell"
    with pytest.raises(ValueError, match="cell_type must be one of"):
        data.read_coco(path, cell_type="A172")


def test_read_coco_errors(tmp_path):
    path, shape, _, _ = _coco_json(tmp_path / "a.json")
    doc = json.loads(path.read_text())
    bad = tmp_path / "bad.json"

    def check(mutate, pattern):
        d = json.loads(json.dumps(doc))
        mutate(d)
        bad.write_text(json.dumps(d))
        with pytest.raises(DataError, match=pattern):
            data.read_coco(bad)

    check(lambda d: d["annotations"][0]["segmentation"].update(counts="a~~"),
          r"bad\.json: annotation 11 of image 7: character '~'")
    check(lambda d: d["annotations"][2]["segmentation"].update(counts="0"),
          r"annotation 13 of image 7: counts sum to 0 pixels, the image has 30 \* 50 = 1500")
    check(lambda d: d["annotations"][1]["segmentation"]["counts"].append(5),
          r"annotation 12 of image 7: counts sum to 1505")
    check(lambda d: d["annotations"][0]["segmentation"].update(size=[50, 30]),
          r"annotation 11 of image 7: RLE size \[50, 30\] does not match")
    check(lambda d: d["annotations"][0].update(category_id=1) or d["categories"].__setitem__(
        0, {"id": 1, "name": "cort"}), r"image 7 has annotations of several cell types \['astro', 'cort'\]")
    check(lambda d: d["annotations"][0].update(image_id=99), r"image ids not in 'images': \['99'\]")
    check(lambda d: d["images"][0].pop("height"), r"images\[0\] has no 'height'")
    check(lambda d: d["annotations"][3].update(segmentation=17), r"annotation 14 of image 8: bad segmentation")
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        data.read_coco(bad)
    with pytest.raises(DataError, match="not found"):
        data.read_coco(tmp_path / "missing.json")


@st.composite
def mask_sets(draw):
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    n = draw(st.integers(0, 4))
    density = draw(st.sampled_from([0.05, 0.5, 0.95]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return (h, w), [rng.random((h, w)) < density for _ in range(n)]


@settings(max_examples=150, deadline=None)
@given(mask_sets())
def test_coco_to_kaggle_matches_pycocotools_decode(case):
    """rle.coco_counts_to_kaggle (used by read_coco) against the reference: coco_to_mask + rle.encode."""
    shape, masks = case
    cocos = [rle.mask_to_coco(m) for m in masks]
    got = rle.coco_counts_to_kaggle(cocos, shape)
    assert got == [rle.encode(rle.coco_to_mask(c, shape)) for c in cocos]
    assert got == [rle.encode(m) for m in masks]


# --------------------------------------------------------------------------------------------
# Folds


def _fold_records(n_samples=8, per_sample=3):
    recs = []
    for ct in CELL_TYPES:
        for s in range(n_samples):
            for i in range(per_sample + s % 2):
                recs.append(ImageRecord(f"{ct}-{s}-{i}", None, (H, W), ct, f"{ct}-s{s}"))
    return recs


def test_make_folds_groups_and_strata():
    recs = _fold_records()
    folds = data.make_folds(recs, n_folds=5, seed=42)
    assert list(folds) == [r.id for r in recs]
    assert set(folds.values()) == set(range(5))
    by_group = defaultdict(set)
    types_in_fold = defaultdict(set)
    for r in recs:
        by_group[r.sample_id].add(folds[r.id])
        types_in_fold[folds[r.id]].add(r.cell_type)
    assert all(len(f) == 1 for f in by_group.values())  # no sample is split
    assert all(t == set(CELL_TYPES) for t in types_in_fold.values())
    assert data.make_folds(recs, n_folds=5, seed=42) == folds
    assert data.make_folds(recs, n_folds=5, seed=7) != folds


def test_make_folds_errors():
    recs = _fold_records(n_samples=1)
    with pytest.raises(DataError, match="3 sample_id group.*fewer than n_folds=5"):
        data.make_folds(recs, n_folds=5)
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        data.make_folds(recs, n_folds=1)
    with pytest.raises(DataError, match="record 'x' has no sample_id"):
        data.make_folds(recs + [ImageRecord("x", None, (H, W), "cort", None)], n_folds=2)
    with pytest.raises(DataError, match="record 'x' has no cell_type"):
        data.make_folds(recs + [ImageRecord("x", None, (H, W), None, "s")], n_folds=2)
    with pytest.raises(DataError, match="duplicate record id"):
        data.make_folds(recs + recs[:1], n_folds=2)


def test_folds_csv_roundtrip_and_errors(tmp_path):
    folds = data.make_folds(_fold_records(), n_folds=4)
    path = data.write_folds_csv(folds, tmp_path / "folds.csv")
    assert data.read_folds_csv(path) == folds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folds.csv"]  # no temp file left
    assert path.read_text().splitlines()[0] == "id,fold"
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        data.write_folds_csv({"a": -1}, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    (tmp_path / "bad.csv").write_text("id,fold\na,0\nb,one\n")
    with pytest.raises(DataError, match=r"bad\.csv line 3, field 'fold': .*'one'"):
        data.read_folds_csv(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("fold,id\n0,a\n1,a\n")
    with pytest.raises(DataError, match=r"line 3, field 'id': duplicate id 'a' \(first on line 2\)"):
        data.read_folds_csv(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("image,fold\na,0\n")
    with pytest.raises(DataError, match=r"line 1 \(header\): missing column\(s\) \['id'\]"):
        data.read_folds_csv(tmp_path / "bad.csv")


def test_split_by_fold_on_the_real_folds_csv():
    root = shared("sartorius")
    records = data.read_train_csv(root / "train.csv", check_images=False)
    folds = data.read_folds_csv(root / "folds.csv")
    train, held_out = data.split_by_fold(records, folds, 3, "folds.csv")
    assert [r.id for r in held_out] == [r.id for r in records if folds[r.id] == 3]
    assert len(train) + len(held_out) == len(records) and held_out and train
    assert not {r.id for r in train} & {r.id for r in held_out}
    with pytest.raises(ValueError, match=r"fold 7: no labelled image in that fold of folds.csv "
                                         r"\(folds: \[0, 1, 2, 3\]\)"):
        data.split_by_fold(records, folds, 7, "folds.csv")
    with pytest.raises(ValueError, match=r"fold 7: no labelled image in that fold of the folds "):
        data.split_by_fold(records, folds, 7)   # folds that were made, not read
    del folds[records[5].id]
    with pytest.raises(ValueError, match=rf"folds.csv: no fold for 1 train id\(s\), e.g. \['{records[5].id}'\]"):
        data.split_by_fold(records, folds, 3, "folds.csv")
    one_fold = {r.id: 0 for r in records}
    with pytest.raises(ValueError, match="every one of the .* labelled images is in it"):
        data.split_by_fold(records, one_fold, 0)


# --------------------------------------------------------------------------------------------
# Real samples from ../shared/data (skipped when absent)


def shared(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def test_real_train_csv_rows_and_image(tmp_path):
    csv_path = shared("h4nyu-kaggle-cell-seg", "annotation.csv")
    png = shared("h4nyu-kaggle-cell-seg", "0030fd0e6378.png")
    (tmp_path / "train").mkdir()
    shutil.copy(csv_path, tmp_path / "train.csv")
    shutil.copy(png, tmp_path / "train" / png.name)
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for p in shared("gallegi-T4E").glob("*.png"):
        shutil.copy(p, test_dir / p.name)
    shutil.copy(shared("theoviel-kaggle_sartorius", "sample_submission.csv"), tmp_path)

    c = data.read_competition_dir(tmp_path)
    (rec,) = c.train
    assert rec.id == "0030fd0e6378" and rec.cell_type == "shsy5y"
    assert rec.sample_id == "shsy5y[diff]_E10-4_Vessel-714_Ph_3"
    assert rec.shape == (520, 704) and rec.n_instances == 395
    areas = rec.stack().sum(axis=(1, 2))
    assert (areas.min(), areas.max()) == (46, 757)
    assert (rec.labels() > 0).sum() == 109_947  # union of the masks (MANIFEST.md)
    assert rec.load_image().shape == (520, 704)
    assert [r.id for r in c.test] == ["7ae19de7bc2a", "d48ec7815252", "d8bfd1dafdc4"]
    assert all(r.shape == (520, 704) for r in c.test)


def test_real_coco_val_cort():
    path = shared("p890040-sartorius", "val_cort_3.json")
    recs = data.read_coco(path)
    assert len(recs) == 40 and sum(r.n_instances for r in recs) == 1296
    assert {r.cell_type for r in recs} == {"cort"}
    doc = json.loads(path.read_text())
    anns = defaultdict(list)
    for a in doc["annotations"]:
        anns[a["image_id"]].append(a)
    for rec in recs[:8]:
        assert rec.id in anns  # p890040's image ids are the Kaggle ids
        areas = rec.stack().sum(axis=(1, 2))
        assert areas.tolist() == [int(a["area"]) for a in anns[rec.id]]
        for k in (0, len(anns[rec.id]) - 1):  # exactly what the reference conversion gives
            ref = rle.encode(rle.coco_to_mask(anns[rec.id][k]["segmentation"], rec.shape))
            assert rec.rles[k] == ref


def test_real_coco_mixed_categories():
    recs = data.read_coco(shared("p890040-sartorius", "val_3.json"))
    assert Counter(r.cell_type for r in recs) == {"cort": 59, "shsy5y": 24, "astro": 18}
    assert sum(r.n_instances for r in recs) == 9796


def test_real_folds_csv(tmp_path):
    folds = data.read_folds_csv(shared("gunesevitan-sartorius", "train_folds.csv"))
    assert len(folds) == 606 and len(set(folds.values())) == 5
    assert sorted(Counter(folds.values()).values()) == [121, 121, 121, 121, 122]
    data.write_folds_csv(folds, tmp_path / "f.csv")
    assert data.read_folds_csv(tmp_path / "f.csv") == folds


def test_real_livecell_tiff_loads_as_gray_uint8():
    img = data.load_image(shared("okotaku-dethub", "A172_Phase_A7_1_00d00h00m_1.tif"))
    assert img.shape == (520, 704) and img.dtype == np.uint8 and img.max() > img.min()


def test_empty_or_missing_sample_id_reads_as_unknown(comp):
    """Real train.csv files keep their metadata columns empty: sample_id reads as None (and
    the column may be absent); make_folds then needs unknown_sample_alone, which makes each
    such image a group of its own."""
    text = (comp / "train.csv").read_text().splitlines()
    header = text[0].split(",")
    col = header.index("sample_id")
    blanked = [",".join("" if k == col else f for k, f in enumerate(line.split(",")))
               for line in text[1:]]
    (comp / "train.csv").write_text("\n".join([text[0]] + blanked) + "\n")
    recs = data.read_train_csv(comp / "train.csv")
    assert recs and all(r.sample_id is None for r in recs)
    dropped = [",".join(f for k, f in enumerate(line.split(",")) if k != col) for line in text]
    (comp / "train.csv").write_text("\n".join(dropped) + "\n")
    assert [r.sample_id for r in data.read_train_csv(comp / "train.csv")] == [None] * len(recs)
    with pytest.raises(DataError, match="has no sample_id"):
        data.make_folds(recs, n_folds=2)
    folds = data.make_folds(recs, n_folds=2, unknown_sample_alone=True)
    assert set(folds) == {r.id for r in recs} and set(folds.values()) == {0, 1}
