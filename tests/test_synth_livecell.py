"""kit.synth_livecell: synthetic images in LIVECell's COCO layout that kit.data reads back."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kit import metric
from kit.data import read_coco
from kit.synth_livecell import CELL_LINES, JSON_NAME, livecell_image, main, make_livecell


def test_livecell_layout_reads_back_to_the_rendered_masks(tmp_path):
    out = make_livecell(tmp_path / "lc", 10, seed=3, shape=(64, 96))
    doc = json.loads((out / JSON_NAME).read_text())
    assert isinstance(doc["annotations"], dict)  # LIVECell's form: id -> annotation
    ann = next(iter(doc["annotations"].values()))
    assert isinstance(ann["segmentation"], list) and isinstance(ann["segmentation"][0], list)
    assert doc["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]
    records = read_coco(out / JSON_NAME, out / "images", source="livecell")
    assert [r.id.split("_")[0] for r in records] == [CELL_LINES[k % 8] for k in range(10)]
    assert all(r.cell_type is None and r.shape == (64, 96) for r in records)
    for k, rec in enumerate(records):
        name, drawn = livecell_image(k, 3, 10, (64, 96))
        assert rec.id == name[:-4] and (rec.load_image() == drawn.image).all()
        # the polygons rasterise back to the drawn cells exactly
        assert metric.image_score(drawn.labels, rec.labels()).score == 1.0
        assert rec.n_instances == len(np.unique(drawn.labels)) - 1


def test_same_seed_same_bytes_and_refusals(tmp_path, capsys):
    a = make_livecell(tmp_path / "a", 4, seed=1, shape=(48, 48))
    b = make_livecell(tmp_path / "b", 4, seed=1, shape=(48, 48))
    assert (a / JSON_NAME).read_bytes() == (b / JSON_NAME).read_bytes()
    assert sorted(p.name for p in (a / "images").iterdir()) == sorted(p.name for p in (b / "images").iterdir())
    with pytest.raises(FileExistsError, match="not empty"):
        make_livecell(a, 4)
    assert main([str(a), "--n-images", "0"]) == 2
    assert "n_images must be a positive integer" in capsys.readouterr().err
    assert main([str(a), "--n-images", "2", "--shape", "48", "48", "--overwrite", "--no-progress"]) == 0
    assert len(list((a / "images").iterdir())) == 2
