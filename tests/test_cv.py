"""python -m kit.cv end to end: tables, JSON, missing and unknown ids, label-image dirs."""
import json

import cv2
import numpy as np
import pytest

from kit import rle
from tests.conftest import SHARED_DATA, run_module

HEADER = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta\n"


def gt_csv(path, rows):
    lines = [f"{i},{a},8,6,{t},11h30m00s,2019-06-16,{t}_s1,0 days 11:30:00\n" for i, a, t in rows]
    path.write_text(HEADER + "".join(lines))
    return path


def square(y, x, size, shape=(6, 8)):
    m = np.zeros(shape, bool)
    m[y:y + size, x:x + size] = True
    return rle.encode(m)


def test_cv_table_json_and_missing_ids(tmp_path):
    gt = gt_csv(tmp_path / "train.csv", [
        ("a", square(0, 0, 2), "cort"), ("a", square(3, 3, 3), "cort"),
        ("b", square(0, 0, 4), "astro"),
        ("c", square(1, 1, 2), "shsy5y"),
    ])
    pred = tmp_path / "pred.csv"
    # a: both perfect -> 1.0; b: 4x4 vs 4x3 box IoU 0.75 -> matches at .50..70 -> 0.5; c missing -> 0
    pred.write_text(f"id,predicted\na,{square(0, 0, 2)}\na,{square(3, 3, 3)}\nb,{rle.encode(np.pad(np.ones((4, 3), bool), ((0, 2), (0, 5))))}\n")
    out = tmp_path / "cv.json"
    done = run_module("kit.cv", "--gt", gt, "--pred", pred, "--json", out, "--by", "cell_type", "--quiet")
    assert done.returncode == 0, done.stderr
    res = json.loads(out.read_text())
    assert res["map"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert res["by_cell_type"]["astro"] == {**res["by_cell_type"]["astro"], "map": 0.5, "n_images": 1}
    assert res["by_cell_type"]["shsy5y"]["map"] == 0.0
    assert res["missing_ids"] == ["c"]
    assert res["thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert len(res["ap"]) == 10 and res["ap"][0] == pytest.approx(2 / 3)
    assert {p["id"]: p["score"] for p in res["per_image"]} == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert "MAP" in done.stdout and "1 GT image(s) had no prediction" in done.stdout
    assert "pooled counts" in done.stdout  # --by cell_type


def test_cv_unknown_prediction_id_is_an_error(tmp_path):
    gt = gt_csv(tmp_path / "train.csv", [("a", square(0, 0, 2), "cort")])
    pred = tmp_path / "pred.csv"
    pred.write_text("id,predicted\nzzz,1 1\n")
    done = run_module("kit.cv", "--gt", gt, "--pred", pred, "--quiet")
    assert done.returncode == 2 and "not in the ground truth: ['zzz']" in done.stderr


def test_cv_bad_rle_names_image(tmp_path):
    gt_csv(tmp_path / "train.csv", [("a", square(0, 0, 2), "cort")])  # --gt given as its folder
    pred = tmp_path / "pred.csv"
    pred.write_text("id,predicted\na,1 2 3\n")
    done = run_module("kit.cv", "--gt", tmp_path, "--pred", pred, "--quiet")
    assert done.returncode == 2 and "prediction for id a" in done.stderr and "odd number" in done.stderr


def test_cv_missing_gt_file(tmp_path):
    done = run_module("kit.cv", "--gt", tmp_path / "nope.csv", "--pred", tmp_path / "p.csv")
    assert done.returncode == 2 and "nope.csv" in done.stderr


def test_cv_label_image_directory_equals_csv(synth_dir, tmp_path):
    """GT scored against itself, given as label PNGs, is perfect; a shifted copy is not."""
    from kit.data import read_train_csv

    recs = read_train_csv(synth_dir / "train.csv", check_images=False)
    preds = tmp_path / "labels"
    preds.mkdir()
    for r in recs:
        cv2.imwrite(str(preds / f"{r.id}.png"), r.labels().astype(np.uint16))
    out = tmp_path / "cv.json"
    done = run_module("kit.cv", "--gt", synth_dir, "--pred", preds, "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr
    res = json.loads(out.read_text())
    # painted labels lose the pixels where GT masks overlap; still almost every IoU > 0.95
    assert res["map"] > 0.9 and res["n_images"] == len(recs)
    np.save(preds / f"{recs[0].id}.npy", np.zeros(recs[0].shape, np.int32))
    (preds / f"{recs[0].id}.png").unlink()
    done = run_module("kit.cv", "--gt", synth_dir, "--pred", preds, "--json", out, "--quiet")
    per_image = {p["id"]: p["score"] for p in json.loads(out.read_text())["per_image"]}
    assert per_image[recs[0].id] == 0.0


def test_cv_fold_restriction(synth_dir, tmp_path):
    from kit.data import make_folds, read_train_csv, write_folds_csv

    recs = read_train_csv(synth_dir / "train.csv", check_images=False)
    folds = make_folds(recs, n_folds=2, seed=0)
    write_folds_csv(folds, tmp_path / "folds.csv")
    fold0 = [r for r in recs if folds[r.id] == 0]
    pred = tmp_path / "oof.csv"
    pred.write_text("id,predicted\n" + "".join(f"{r.id},{a}\n" for r in fold0 for a in r.rles))
    out = tmp_path / "cv.json"
    done = run_module("kit.cv", "--gt", synth_dir, "--pred", pred, "--folds", tmp_path / "folds.csv",
                      "--fold", 0, "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr
    res = json.loads(out.read_text())
    assert res["n_images"] == len(fold0) and res["missing_ids"] == [] and res["map"] == 1.0


def _strict_json(path):
    """Parse JSON refusing NaN / Infinity (Python's json writes them; JSON has neither)."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_cv_nothing_to_score_is_an_error(tmp_path):
    gt = tmp_path / "train.csv"
    gt.write_text(HEADER)
    pred = tmp_path / "pred.csv"
    pred.write_text("id,predicted\n")
    out = tmp_path / "cv.json"
    done = run_module("kit.cv", "--gt", gt, "--pred", pred, "--json", out, "--quiet")
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().count("\n") == 0 and "no image to score" in done.stderr
    assert "nan" not in (done.stdout + done.stderr).lower()
    from kit import metric

    with pytest.raises(metric.NothingToScore):
        metric.summarize([])


REAL = SHARED_DATA / "sartorius"
needs_real = pytest.mark.skipif(not (REAL / "train.csv").is_file(),
                                reason="real Sartorius GT (../shared/data/sartorius) not present")


@needs_real
def test_cv_real_train_csv_as_it_comes(tmp_path):
    """The shared real train.csv (metadata columns empty, overlapping and duplicate masks)
    scored against itself is exactly 1.0; against a perturbed copy of some images every image
    score equals the independent reference, the others are missing (all FN), and the JSON is
    strict JSON."""
    from tests import metric_reference as reference

    from benchmarks import overlap as bench_overlap
    from kit.data import read_train_csv

    recs = read_train_csv(REAL / "train.csv", check_images=False)
    assert sum(r.sample_id is None for r in recs) == 417  # metadata kept for one image only
    self_pred = tmp_path / "self.csv"
    self_pred.write_text("id,predicted\n" + "".join(f"{r.id},{a}\n" for r in recs for a in r.rles))
    out = tmp_path / "self.json"
    done = run_module("kit.cv", "--gt", REAL / "train.csv", "--pred", self_pred, "--json", out,
                      "--quiet")
    assert done.returncode == 0, done.stderr
    res = _strict_json(out)
    assert res["map"] == 1.0 and res["n_images"] == 418 and res["missing_ids"] == []

    by_type = {}
    for r in recs:
        by_type.setdefault(r.cell_type, []).append(r)
    chosen = [r for rs in by_type.values() for r in rs[:3]]
    chosen += [r for r in recs if r.id in ("a7b1db2a42fc", "de504eaa5349")]
    rng = np.random.default_rng(1)
    preds = {r.id: bench_overlap.perturb_rles(list(r.rles), r.shape, rng) for r in chosen}
    pred = tmp_path / "pred.csv"
    pred.write_text("id,predicted\n" + "".join(f"{i},{a}\n" for i, p in preds.items() for a in p))
    out = tmp_path / "cv.json"
    done = run_module("kit.cv", "--gt", REAL, "--pred", pred, "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr
    res = _strict_json(out)
    per_image = {p["id"]: p["score"] for p in res["per_image"]}
    for r in chosen:
        expected = reference.image_score([reference.rle_pixels(t) for t in r.rles],
                                         [reference.rle_pixels(t) for t in preds[r.id]])
        assert per_image[r.id] == pytest.approx(expected, abs=1e-12), r.id
        assert 0.0 < per_image[r.id] < 1.0
    assert len(res["missing_ids"]) == 418 - len(chosen)
    assert all(per_image[i] == 0.0 for i in res["missing_ids"])
