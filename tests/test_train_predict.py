"""kit.train baseline -> model folder -> kit.predict -> validated submission, as subprocesses."""
import json

import pytest

from kit.celltype import CellTypeClassifier, image_features, oof_accuracy
from kit.data import read_competition_dir
from tests.conftest import run_module


def test_train_writes_model_folder_and_oof(baseline_run, synth_dir):
    out, done = baseline_run
    for name in ("model.json", "celltype.joblib", "folds.csv", "oof.csv", "oof_score.json",
                 "params.json", "train.log"):
        assert (out / name).is_file(), name
    events = [json.loads(line)["event"] for line in (out / "train.log").read_text().splitlines()]
    assert events == ["split", "memory_plan", "celltype", "oof"]
    assert "MAP" in done.stdout and "held-out accuracy" in done.stdout
    # the OOF file re-scored by kit.cv gives the number the trainer recorded
    cv_json = out / "cv.json"
    cv = run_module("kit.cv", "--gt", synth_dir / "train.csv", "--pred", out / "oof.csv",
                    "--folds", out / "folds.csv", "--fold", 0, "--json", cv_json, "--quiet")
    assert cv.returncode == 0, cv.stderr
    assert json.loads(cv_json.read_text())["map"] == json.loads((out / "oof_score.json").read_text())["map"]


def test_predict_writes_valid_submission(baseline_run, synth_dir, tmp_path):
    out, _ = baseline_run
    sub = tmp_path / "submission.csv"
    done = run_module("kit.predict", "--model", out, "--images", synth_dir / "test",
                      "--ids", synth_dir / "sample_submission.csv", "--out", sub, "--quiet")
    assert done.returncode == 0, done.stderr
    assert run_module("kit.submission", sub, "--data", synth_dir).returncode == 0
    ids = [line.split(",")[0] for line in (synth_dir / "sample_submission.csv").read_text().splitlines()[1:]]
    assert {line.split(",")[0] for line in sub.read_text().splitlines()[1:]} == set(ids)


def test_predict_ids_from_any_csv_with_an_id_column(baseline_run, synth_dir, tmp_path):
    """--ids reads the id column alone: a train.csv (an id on every row of its image) predicts
    each of its images once, in order; an empty id names the file and line."""
    out, _ = baseline_run
    train = (synth_dir / "train.csv").read_text().splitlines()
    header = train[0].split(",")
    col = header.index("id")
    first_two = list(dict.fromkeys(line.split(",")[col] for line in train[1:]))[:2]
    ids = tmp_path / "two_images.csv"
    ids.write_text("\n".join([train[0]] + [line for line in train[1:]
                                            if line.split(",")[col] in first_two]) + "\n")
    sub = tmp_path / "submission.csv"
    done = run_module("kit.predict", "--model", out, "--images", synth_dir / "train",
                      "--ids", ids, "--cell-types", synth_dir / "train.csv", "--out", sub, "--quiet")
    assert done.returncode == 0, done.stderr
    rows = [line.split(",")[0] for line in sub.read_text().splitlines()[1:]]
    assert list(dict.fromkeys(rows)) == first_two
    ids.write_text(f"cell_type,id\ncort,{first_two[0]}\ncort,\n")
    done = run_module("kit.predict", "--model", out, "--images", synth_dir / "train",
                      "--ids", ids, "--out", sub, "--quiet")
    assert done.returncode == 2 and f"{ids} line 3" in done.stderr and "empty id" in done.stderr


def test_predict_errors(baseline_run, synth_dir, tmp_path):
    done = run_module("kit.predict", "--model", tmp_path, "--images", synth_dir / "test",
                      "--out", tmp_path / "s.csv")
    assert done.returncode == 2 and "no model.json" in done.stderr
    (tmp_path / "model.json").write_text('{"type": "unet9000"}')
    done = run_module("kit.predict", "--model", tmp_path, "--images", synth_dir / "test",
                      "--out", tmp_path / "s.csv")
    assert done.returncode == 2 and "unknown model type 'unet9000'" in done.stderr
    assert "baseline" in done.stderr
    # a model folder without a classifier needs --cell-types
    out, _ = baseline_run
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.json").write_text((out / "model.json").read_text())
    done = run_module("kit.predict", "--model", bare, "--images", synth_dir / "test",
                      "--out", tmp_path / "s.csv")
    assert done.returncode == 2 and "pass --cell-types" in done.stderr
    assert not (tmp_path / "s.csv").exists()
    done = run_module("kit.predict", "--model", bare, "--images", synth_dir / "test", "--cell-types",
                      synth_dir / "test_labels.csv", "--out", tmp_path / "s.csv", "--quiet")
    assert done.returncode == 0, done.stderr


def test_cell_type_classifier_on_synthetic_images(tmp_path):
    from kit.synth import make_dataset

    comp = read_competition_dir(make_dataset(tmp_path / "d", n_train=40, n_test=10, seed=5,
                                             shape=(260, 352)))
    feats = [image_features(r.load_image()) for r in comp.train]
    types = [r.cell_type for r in comp.train]
    clf = CellTypeClassifier().fit_features(feats, types)
    clf.save(tmp_path)
    loaded = CellTypeClassifier.load(tmp_path)
    test_pred = [loaded.predict(r.load_image()) for r in comp.test]
    majority = max(types.count(t) for t in set(types)) / len(types)
    assert sum(p == r.cell_type for p, r in zip(test_pred, comp.test)) / len(comp.test) > majority
    acc, oof = oof_accuracy(feats, types, [r.sample_id for r in comp.train], n_splits=3)
    assert len(oof) == len(types) and acc > majority
    with pytest.raises(ValueError, match="unknown cell types"):
        CellTypeClassifier().fit_features(feats[:2], ["cort", "neuron"])


def test_train_on_a_real_training_only_directory(real_train_only_dir, tmp_path):
    """Real train.csv rows as they come (no sample_id) + train/ only: kit.train makes
    ungrouped folds with a warning, or takes --folds; the OOF score is strict JSON in [0, 1]
    and kit.cv re-scores oof.csv to the same number."""
    import math

    from kit.data import read_train_csv
    from tests.conftest import REAL_SARTORIUS

    recs = read_train_csv(real_train_only_dir / "train.csv")
    unknown = sum(r.sample_id is None for r in recs)
    assert unknown >= len(recs) - 1
    out = tmp_path / "baseline"
    done = run_module("kit.train", "baseline", "--data", real_train_only_dir, "--fold", 0,
                      "--n-folds", 3, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"warning: {unknown} of {len(recs)} train images have no sample_id" in done.stderr
    def refuse(name):
        raise AssertionError(f"{name} in oof_score.json (not JSON)")

    res = json.loads((out / "oof_score.json").read_text(), parse_constant=refuse)
    assert 0.0 <= res["map"] <= 1.0 and math.isfinite(res["map"])
    cv_json = tmp_path / "cv.json"
    cv = run_module("kit.cv", "--gt", real_train_only_dir, "--pred", out / "oof.csv", "--folds",
                    out / "folds.csv", "--fold", 0, "--json", cv_json, "--quiet")
    assert cv.returncode == 0, cv.stderr
    assert json.loads(cv_json.read_text())["map"] == res["map"]

    out2 = tmp_path / "baseline_folds"
    done = run_module("kit.train", "baseline", "--data", real_train_only_dir, "--fold", 1,
                      "--folds", REAL_SARTORIUS / "folds.csv", "--out", out2, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    folds = dict(line.split(",") for line in (out2 / "folds.csv").read_text().split()[1:])
    assert set(folds) == {r.id for r in recs}


def test_an_earlier_run_is_continued_or_replaced_only_when_asked(synth_dir, tmp_path):
    out = tmp_path / "run"
    common = ["kit.train", "baseline", "--data", synth_dir, "--fold", 0, "--n-folds", 3,
              "--out", out, "--quiet"]
    assert run_module(*common).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    done = run_module(*common)
    assert done.returncode == 2 and "holds an earlier run" in done.stderr
    assert "--resume" in done.stderr and "--fresh" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # left alone
    done = run_module(*common, "--resume", "--fresh")
    assert done.returncode == 2 and "contradict" in done.stderr
    (out / "stale.txt").write_text("from the earlier run")
    done = run_module(*common, "--fresh")
    assert done.returncode == 0, done.stderr
    assert not (out / "stale.txt").exists() and (out / "oof_score.json").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.json").write_text("{}")
    done = run_module(*common[:-3], "--out", foreign, "--fresh", "--quiet")
    assert done.returncode == 2 and "no params.json" in done.stderr
    assert (foreign / "model.json").is_file()


def test_tune_chooses_post_processing_on_the_validation_split_only(synth_dir, tmp_path):
    from kit.data import read_train_csv
    from kit.metric import image_score
    from kit.models import load_model
    from kit.tuning import load_cache

    out = tmp_path / "tuned"
    done = run_module("kit.train", "baseline", "--data", synth_dir, "--fold", 0, "--n-folds", 3,
                      "--val-fraction", 0.3, "--tune", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "post-processing tuned on the" in done.stdout and (out / "tuned.md").is_file()
    events = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [e["event"] for e in events] == ["split", "memory_plan", "celltype", "tuned", "oof"]
    # the validation split (and only it) was cached and searched; the held-out fold stays out
    val = (out / "val.csv").read_text().split()[1:]
    folds = dict(line.split(",") for line in (out / "folds.csv").read_text().split()[1:])
    assert val and all(folds[i] != "0" for i in val)
    assert [i["id"] for i in load_cache(out / "tune_cache")["images"]] == val
    selection = json.loads((out / "oof_score.json").read_text())["selection"]
    assert "tuned.yaml" in selection["validation_chooses"]
    assert selection["held_out_chooses"] == "nothing (scored only)"
    # the out-of-fold predictions are the tuned model's: the same masks, instance for instance
    record = next(r for r in read_train_csv(synth_dir / "train.csv") if folds[r.id] == "0")
    labels = load_model(out).predict(record.load_image(), record.cell_type)
    rows = [line.split(",") for line in (out / "oof.csv").read_text().splitlines()[1:]]
    oof_rles = [rle for id_, rle in rows if id_ == record.id and rle]
    same = image_score(oof_rles, labels, record.shape)
    assert same.n_pred == same.n_true == len(oof_rles) > 0 and (same.tp == len(oof_rles)).all()


def test_tune_without_validation_images_exits_2_and_writes_nothing(synth_dir, tmp_path):
    out = tmp_path / "none"
    done = run_module("kit.train", "baseline", "--data", synth_dir, "--fold", 0, "--n-folds", 3,
                      "--val-fraction", 0, "--tune", "--out", out, "--quiet")
    assert done.returncode == 2 and "--tune needs validation images" in done.stderr
    assert not out.exists()
