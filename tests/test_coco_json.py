"""kit.coco_json: COCO annotations compacted while parsing, read exactly as pycocotools reads them."""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from kit import data, rle
from kit.coco_json import load_compact, segmentation_rle
from tests.conftest import SHARED_DATA

LIVECELL_TEST_JSON = SHARED_DATA / "livecell" / "livecell_coco_test.json"
needs_livecell = pytest.mark.skipif(not LIVECELL_TEST_JSON.is_file(),
                                    reason="LIVECell sample (../shared/data/livecell) absent")


def _doc():
    """Two 30 x 50 images: a two-part polygon, a square polygon with bbox/area/iscrowd, an
    uncompressed column-major RLE, a compressed RLE."""
    shape = (30, 50)
    square = [2.0, 20.0, 12.0, 20.0, 12.0, 27.0, 2.0, 27.0]
    two_parts = [[30.5, 3.25, 40.0, 3.0, 40.0, 9.75, 30.0, 9.0], [41.0, 15.0, 48.0, 15.0, 45.0, 25.0]]
    m = rle.decode("3 4 60 9 110 9", shape)
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": two_parts, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "segmentation": [square], "bbox": [2, 20, 10, 7],
         "area": 70.0},
        {"id": 3, "image_id": 8, "category_id": 1,
         "segmentation": {"size": list(shape), "counts": [5, 10, 1485]}},
        {"id": 4, "image_id": 8, "category_id": 1, "segmentation": rle.mask_to_coco(m)},
    ]
    images = [{"id": 7, "file_name": "a.tif", "height": shape[0], "width": shape[1]},
              {"id": 8, "file_name": "b.tif", "height": shape[0], "width": shape[1]}]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}


def _pycocotools_rles(path):
    """Per image id, what pycocotools makes of each annotation: annToRLE, then a Kaggle RLE."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    out = {}
    for iid, img in coco.imgs.items():
        shape = (img["height"], img["width"])
        out[iid] = [rle.encode(rle.coco_to_mask(coco.annToRLE(a), shape))
                    for a in coco.imgToAnns.get(iid, [])]
    return out


@pytest.mark.parametrize("images_first", [True, False], ids=["images-first", "annotations-first"])
def test_compact_annotations_read_as_pycocotools_reads_them(tmp_path, images_first):
    doc = _doc()
    if not images_first:  # the hook has not seen the image yet: polygons wait, packed
        doc = {"annotations": doc["annotations"], "categories": doc["categories"], "images": doc["images"]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    loaded = load_compact(path)
    assert [sorted(a) for a in loaded["annotations"]] == [["category_id", "id", "image_id", "segmentation"]] * 4
    segs = [a["segmentation"] for a in loaded["annotations"]]
    if images_first:  # stored as the counts bytes of a compressed COCO RLE
        assert all(isinstance(s, bytes) for s in segs)
    else:  # polygons packed, RLE dicts as parsed
        assert not any(isinstance(s, (bytes, list)) for s in segs[:2]) and isinstance(segs[2], dict)
    for a in loaded["annotations"]:
        assert set(segmentation_rle(a["segmentation"], 30, 50)) == {"size", "counts"}
    expected = _pycocotools_rles(path)
    records = data.read_coco(path)
    assert [list(r.rles) for r in records] == [expected[7], expected[8]]
    assert all(r.rles[k] for r in records for k in range(len(r.rles)))  # no empty mask


def test_a_bad_polygon_is_reported_with_its_annotation(tmp_path):
    doc = _doc()
    doc["annotations"][1]["segmentation"] = [[1.0, "x", 3.0, 4.0, 5.0, 6.0]]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(data.DataError, match=r"a\.json: annotation 2 of image 7: bad segmentation"):
        data.read_coco(path)
    doc["annotations"][1]["image_id"] = [7]
    path.write_text(json.dumps(doc))
    with pytest.raises(data.DataError, match=r"annotations\[1\] \(id 2\): image_id must be an integer"):
        data.read_coco(path)


@needs_livecell
def test_real_livecell_json_reads_as_pycocotools_reads_it(tmp_path):
    """The LIVECell sample's test GT (15 images, 3,285 polygons): every Kaggle RLE equals
    pycocotools' annToRLE decoded and encoded, in both key orders of the file."""
    expected = _pycocotools_rles(LIVECELL_TEST_JSON)
    doc = json.loads(LIVECELL_TEST_JSON.read_text())
    ids = {img["file_name"].rsplit(".", 1)[0]: img["id"] for img in doc["images"]}
    records = data.read_coco(LIVECELL_TEST_JSON)
    assert sum(len(r.rles) for r in records) == 3285
    assert all(list(r.rles) == expected[ids[r.id]] for r in records)
    reordered = tmp_path / "annotations_first.json"
    reordered.write_text(json.dumps({"annotations": {str(a["id"]): a for a in doc["annotations"]},
                                     **{k: v for k, v in doc.items() if k != "annotations"}}))
    assert [r.rles for r in data.read_coco(reordered)] == [r.rles for r in records]
