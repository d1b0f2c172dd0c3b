"""kit.eda: numbers of a hand-counted train.csv, artifact lists, --clean, synthetic and real GT."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from kit import eda, rle
from kit.data import ImageRecord, read_train_csv
from tests.conftest import run_module

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HEADER = ["id", "annotation", "width", "height", "cell_type", "plate_time", "sample_date",
          "sample_id", "elapsed_timedelta"]
H, W = 40, 60


def box(y, x, h, w=None):
    m = np.zeros((H, W), bool)
    m[y:y + h, x:x + (w or h)] = True
    return m


RING = box(2, 2, 12) & ~box(6, 6, 4)  # 144 - 16 = 128 px, hole 16 px
TWO_PARTS = box(2, 20, 6) | box(10, 30, 6)  # 72 px in two 8-connected pieces
PIXEL = np.zeros((H, W), bool)
PIXEL[35, 55] = True
# (id, cell_type, mask) in file order; ids first appear in the order a1, c1, a2, s1, c2.
ROWS = [
    ("a1", "astro", RING),
    ("c1", "cort", box(2, 2, 6)),  # 36
    ("a1", "astro", box(20, 2, 10)),  # 100 } intersection 10 x 7 = 70 > 0.5 * 100: heavy
    ("a1", "astro", box(20, 5, 10)),  # 100 }
    ("a2", "astro", box(5, 5, 7)),  # 49
    ("c1", "cort", box(2, 20, 8)),  # 64
    ("a1", "astro", TWO_PARTS),
    ("s1", "shsy5y", None),  # an image without instances
    ("c1", "cort", box(20, 2, 10)),  # 100
    ("a1", "astro", box(20, 30, 8)),  # 64  } intersection 2 x 2 = 4: light
    ("a1", "astro", box(26, 36, 10)),  # 100 }
    ("c2", "cort", box(2, 2, 7)),  # 49
    ("c2", "cort", box(2, 20, 9)),  # 81
    ("c2", "cort", box(20, 2, 11)),  # 121
    ("c2", "cort", PIXEL),  # 1 px fragment
]
CORT_AREAS = [36, 64, 100, 49, 81, 121, 1]
ASTRO_AREAS = [128, 100, 100, 72, 64, 100, 49]


def write_train_csv(path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for id_, ct, m in ROWS:
            w.writerow([id_, "" if m is None else rle.encode(m), W, H, ct, "11h30m00s",
                        "2019-06-16", f"{ct}_s{id_}", "0 days 11:30:00"])
    return path


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eda_hand")
    data = root / "data"
    data.mkdir()
    write_train_csv(data / "train.csv")
    done = run_module("kit.eda", data, "--out", root / "out", "--clean", "--quiet")
    assert done.returncode == 0, done.stderr
    return data, root / "out", done


def test_tables_are_the_hand_counted_numbers(hand_run):
    _, out, done = hand_run
    doc = json.loads((out / "eda.json").read_text())
    assert doc["n_images"] == 5 and doc["n_masks"] == 14
    assert list(doc["cell_types"]) == ["shsy5y", "astro", "cort"]
    cort, astro, shsy = (doc["cell_types"][t] for t in ("cort", "astro", "shsy5y"))
    assert cort["area"] == {"count": 7, "mean": pytest.approx(452 / 7),
                            "std": pytest.approx(np.std(CORT_AREAS, ddof=1)), "min": 1, "max": 121}
    assert cort["cells_per_image"] == {"mean": 3.5, "std": pytest.approx(0.5 ** 0.5),
                                       "min": 3, "max": 4}
    assert astro["area"] == {"count": 7, "mean": pytest.approx(613 / 7),
                             "std": pytest.approx(np.std(ASTRO_AREAS, ddof=1)), "min": 49,
                             "max": 128}
    assert astro["cells_per_image"] == {"mean": 3.5, "std": pytest.approx(12.5 ** 0.5),
                                        "min": 1, "max": 6}
    # the empty shsy5y image: no masks, one image with 0 cells, std undefined
    assert shsy["area"] == {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    assert shsy["cells_per_image"] == {"mean": 0.0, "std": None, "min": 0, "max": 0}
    assert (shsy["n_images"], cort["n_images"], astro["n_images"]) == (1, 2, 2)
    assert cort["share_images"] == pytest.approx(0.4) and astro["share_masks"] == 0.5
    assert doc["all"]["area"]["count"] == 14 and doc["all"]["cells_per_image"]["max"] == 6
    # artifacts
    assert astro["holes"] == {"n_masks": 1, "n_images": 1, "n_large": 0, "n_images_large": 0,
                              "hole_area": {"count": 1, "mean": 16.0, "std": None, "min": 16,
                                            "max": 16}}
    assert cort["holes"]["n_masks"] == 0
    assert cort["fragments"] == {"n_masks": 1, "n_images": 1, "small": 1, "multi_component": 0}
    assert astro["fragments"] == {"n_masks": 1, "n_images": 1, "small": 0, "multi_component": 1}
    assert astro["overlaps"] == {"n_pairs": 2, "overlap_pixels": 74, "n_heavy": 1,
                                 "n_images_heavy": 1, "n_duplicates": 0}
    assert cort["overlaps"]["n_pairs"] == 0
    assert doc["artifact_ids"] == {"holes": ["a1"], "fragments": ["c2", "a1"], "overlaps": ["a1"]}
    assert "5 images, 14 masks" in done.stdout


def test_artifact_csvs_and_report(hand_run):
    _, out, _ = hand_run
    read = lambda name: (out / name).read_text().splitlines()  # noqa: E731
    assert read("holes.csv") == ["id,cell_type,mask,area,filled_area,hole_area,hole_fraction",
                                 "a1,astro,0,128,144,16,0.1111"]
    assert read("fragments.csv") == ["id,cell_type,mask,area,n_components,reason",
                                     "a1,astro,3,72,2,components>1", "c2,cort,3,1,1,area<30"]
    assert read("overlaps.csv") == [
        "id,cell_type,mask_a,mask_b,area_a,area_b,intersection,over_smaller,iou",
        "a1,astro,1,2,100,100,70,0.7,0.5385"]
    report = (out / "report.md").read_text()
    assert "| cort | 7 | 64.6 | 40.4 | 1 | 121 |" in report
    assert "| shsy5y | 1 | 0.0 | – | 0 | 0 |" in report
    for png in ("cell_area_hist.png", "cells_per_image_hist.png", "cell_types.png"):
        assert f"]({png})" in report
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_clean_fills_the_hole_and_changes_nothing_else(hand_run):
    data, out, _ = hand_run
    old = (data / "train.csv").read_text().splitlines()
    new = (out / "train_clean.csv").read_text().splitlines()
    assert len(new) == len(old) and new[0] == old[0]
    changed = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    assert changed == [1]  # only the ring's row (line 2)
    o, n = next(csv.reader([old[1]])), next(csv.reader([new[1]]))
    assert o[:1] + o[2:] == n[:1] + n[2:]  # every other field unchanged
    filled = rle.decode(n[1], (H, W))
    assert filled.sum() == 144 and (filled == box(2, 2, 12)).all()
    # the cleaned file reads back with the same records, and has no holes left
    images = eda.analyze(read_train_csv(out / "train_clean.csv", check_images=False),
                         progress=False)
    assert sum(int((im.hole_areas > 0).sum()) for im in images) == 0
    assert json.loads((out / "eda.json").read_text())["clean"]["n_filled"] == 1


def test_overlaps_match_a_brute_force_count():
    rng = np.random.default_rng(4)
    masks = [box(*rng.integers(0, 30, 2), *rng.integers(2, 12, 2)) for _ in range(25)]
    rec = ImageRecord("x", None, (H, W), "cort", "s", tuple(rle.encode(m) for m in masks))
    im = eda.analyze_image(rec)
    want = {(a, b): int((masks[a] & masks[b]).sum()) for a in range(25) for b in range(a + 1, 25)}
    assert {(a, b): c for a, b, c in im.pairs.tolist()} == {k: v for k, v in want.items() if v}
    assert im.overlap_pixels == int((np.sum(masks, axis=0) >= 2).sum())
    assert im.areas.tolist() == [int(m.sum()) for m in masks]


def test_runs_that_wrap_rows_and_empty_inputs():
    # one run from the end of row 10 into row 11: 4 px, two 8-connected pieces
    rec = ImageRecord("w", None, (H, W), None, None, (f"{10 * W + 58 + 1} 4",))
    im = eda.analyze_image(rec)
    assert im.areas.tolist() == [4] and im.n_components.tolist() == [2]
    assert im.type_key == "unknown" and im.pairs.shape == (0, 3)
    empty = eda.analyze_image(ImageRecord("e", None, (H, W), "astro", None, ()))
    assert empty.n_masks == 0 and empty.overlap_pixels == 0
    assert eda.crop_to_rle(RING[2:14, 2:14], 2, 2, W) == rle.encode(RING)


def test_synthetic_hollow_masks_are_found(synth_dir):
    params = json.loads((synth_dir / "synth_params.json").read_text())
    hollow = {(i, k) for i, ks in params["hollow_masks"].items() for k in ks}
    assert hollow  # the fixture plants some, in train.csv and test_labels.csv
    records = [r for name in ("train.csv", "test_labels.csv")
               for r in read_train_csv(synth_dir / name, check_images=False)]
    rows = eda.artifact_rows(eda.analyze(records, progress=False))["holes"]
    assert hollow <= {(r["id"], r["mask"]) for r in rows}
    # elsewhere only rasterisation pinholes of a pixel or two
    assert {(r["id"], r["mask"]) for r in rows if r["hole_area"] >= eda.LARGE_HOLE} == hollow
    assert max(r["hole_area"] for r in rows if (r["id"], r["mask"]) not in hollow) <= 5


def test_cli_errors_exit_2(tmp_path, capsys):
    done = run_module("kit.eda", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert done.returncode == 2 and "nowhere: no such file or directory" in done.stderr
    assert eda.main([str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2  # no train.csv
    assert "holds no train.csv" in capsys.readouterr().err
    assert eda.main(["--out", str(tmp_path / "o")]) == 2  # no input at all
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(HEADER) + f"\nx,5 0,{W},{H},cort,t,d,s,e\n")
    assert eda.main([str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert not (tmp_path / "o" / "eda.json").exists()


@pytest.mark.skipif(not (SHARED_DATA / "p890040-sartorius").is_dir(),
                    reason="real COCO GT in ../shared/data is absent")
def test_real_coco_gt_numbers_and_hollow_astro(tmp_path):
    d = SHARED_DATA / "p890040-sartorius"
    js = [d / "train_astro_2.json", d / "val_astro_2.json"]
    assert eda.main(["--coco", *map(str, js), "--out", str(tmp_path), "--quiet"]) == 0
    doc = json.loads((tmp_path / "eda.json").read_text())
    astro = doc["cell_types"]["astro"]
    # shared/NOTES.md: astro 80 +- 64 (5-594) cells per image, mean area 906, sizes 37-13327
    assert (astro["n_images"], astro["n_masks"]) == (131, 10522)
    c = astro["cells_per_image"]
    assert (round(c["mean"]), round(c["std"]), c["min"], c["max"]) == (80, 64, 5, 594)
    assert (round(astro["area"]["mean"]), astro["area"]["min"], astro["area"]["max"]) == \
        (906, 37, 13327)
    holes = {}
    with open(tmp_path / "holes.csv") as f:
        for r in csv.DictReader(f):
            holes[r["id"]] = max(holes.get(r["id"], 0), int(r["hole_area"]))
    for id_ in ("174793807517", "13325f865bb0", "182c3da676bd"):  # known hollow astro images
        assert holes[id_] >= eda.LARGE_HOLE, id_
        assert doc["artifact_ids"]["holes"].index(id_) < 40  # among the largest holes


def test_real_training_only_directory(real_train_only_dir, tmp_path):
    """kit.eda takes a real training-only directory as it comes (metadata columns empty)."""
    out = tmp_path / "eda"
    done = run_module("kit.eda", real_train_only_dir, "--out", out)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "eda.json").read_text())
    assert doc["n_images"] == 18 and (out / "report.md").is_file()
    assert {t: v["n_images"] for t, v in doc["cell_types"].items()} == {"cort": 8, "astro": 6,
                                                                       "shsy5y": 4}
