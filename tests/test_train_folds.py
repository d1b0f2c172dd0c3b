"""python -m kit.train_folds: every fold trained, the whole train set scored out of fold, the
fold ensemble as the submission model; a rerun reuses finished folds."""
import csv
import json

import pytest

from tests.conftest import TINY_MASKRCNN, run_module


def _assert_writes_a_valid_submission(model, synth_dir, tmp_path):
    """kit.predict with ``model`` on the synthetic test images, then kit.submission's check."""
    sub = tmp_path / "submission.csv"
    done = run_module("kit.predict", "--model", model, "--images", synth_dir / "test",
                      "--out", sub, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_module("kit.submission", sub, "--data", synth_dir).returncode == 0


def _ids(path) -> list[str]:
    with open(path, newline="") as f:
        return list(dict.fromkeys(row[0] for row in list(csv.reader(f))[1:]))


@pytest.fixture(scope="module")
def baseline_folds(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("folds") / "baseline"
    done = run_module("kit.train_folds", "baseline", "--data", synth_dir, "--n-folds", 3,
                      "--out", out, "--quiet")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out, done


def test_every_image_out_of_fold_once_and_scored_as_kit_cv_scores(baseline_folds, synth_dir, tmp_path):
    out, done = baseline_folds
    train_ids = _ids(synth_dir / "train.csv")
    assert _ids(out / "oof.csv") == train_ids               # each image once, train.csv order
    folds = dict(row for row in csv.reader(open(out / "folds.csv")) if row[0] != "id")
    for k in (0, 1, 2):
        fold_oof = set(_ids(out / f"fold{k}" / "oof.csv"))
        assert fold_oof == {i for i, f in folds.items() if f == str(k)}   # its held-out fold only
    cv_json = tmp_path / "cv.json"
    assert run_module("kit.cv", "--gt", synth_dir, "--pred", out / "oof.csv", "--json", cv_json).returncode == 0
    ours = json.loads((out / "oof_score.json").read_text())
    assert ours["map"] == pytest.approx(json.loads(cv_json.read_text())["map"], abs=1e-12)
    summary = json.loads((out / "train_folds.json").read_text())
    for k in (0, 1, 2):
        fold_map = json.loads((out / f"fold{k}" / "oof_score.json").read_text())["map"]
        assert summary["folds"][str(k)]["map"] == fold_map
    assert summary["oof_map"] == ours["map"] and summary["ensemble"]["members"] == ["fold0", "fold1", "fold2"]
    assert f"out of fold over all {len(train_ids)} train images: MAP {ours['map']:.4f}" in done.stdout


def test_fold_ensemble_is_the_submission_model(baseline_folds, synth_dir, tmp_path):
    out, _ = baseline_folds
    doc = json.loads((out / "ensemble" / "model.json").read_text())
    assert doc["type"] == "ensemble"
    _assert_writes_a_valid_submission(out / "ensemble", synth_dir, tmp_path)


def test_rerun_reuses_folds_and_refuses_another_command(baseline_folds, synth_dir):
    out, _ = baseline_folds
    before = {k: (out / f"fold{k}" / "model.json").stat().st_mtime_ns for k in (0, 1, 2)}
    done = run_module("kit.train_folds", "baseline", "--data", synth_dir, "--n-folds", 3,
                      "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("reused the finished run") == 3
    assert {k: (out / f"fold{k}" / "model.json").stat().st_mtime_ns for k in (0, 1, 2)} == before
    done = run_module("kit.train_folds", "baseline", "--data", synth_dir, "--n-folds", 4,
                      "--out", out, "--quiet")
    assert done.returncode == 2 and "another command or other folds: pass --fresh" in done.stderr
    done = run_module("kit.train_folds", "baseline", "--data", synth_dir, "--out", out, "--fold", 1)
    assert done.returncode == 2 and "--fold: kit.train_folds sets it" in done.stderr


def test_learned_model_all_folds_end_to_end(synth_dir, tmp_path):
    """A tiny Mask R-CNN on every fold of the synthetic data, one after another: its pace line,
    the whole-set OOF and a fold ensemble with flip TTA that writes a valid submission."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_MASKRCNN)
    out = tmp_path / "mr"
    done = run_module("kit.train_folds", "maskrcnn", "--data", synth_dir, "--n-folds", 2,
                      "--out", out, "--tta", "id,hflip", "--config", config, "--quiet")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "fold 0: done in" in done.stdout and "steps at a median" in done.stdout
    assert "1 fold(s) left, about" in done.stdout
    assert _ids(out / "oof.csv") == _ids(synth_dir / "train.csv")
    params = json.loads((out / "fold1" / "params.json").read_text())
    assert params["config"] == str(config) and params["fold"] == 1
    ens = json.loads((out / "ensemble" / "model.json").read_text())
    assert ens["config"]["tta"] == ["id", "hflip"] and len(ens["config"]["members"]) == 2
    _assert_writes_a_valid_submission(out / "ensemble", synth_dir, tmp_path)


def test_all_folds_kernel_function_runs_locally(synth_dir, tmp_path):
    """kernels/train-all-folds runs kit.kaggle_kernel.train_folds after the bundle install; with
    local paths it trains every fold and leaves the fold ensemble under --out."""
    from kit.kaggle_kernel import train_folds

    assert train_folds(["--data", str(synth_dir), "--out", str(tmp_path), "--model", "baseline",
                        "--parallel", "2", "--n-folds", "2", "--quiet"]) == 0
    out = tmp_path / "baseline-folds"
    assert (out / "ensemble" / "model.json").is_file() and (out / "oof_score.json").is_file()
    assert sorted(json.loads((out / "train_folds.json").read_text())["folds"]) == ["0", "1"]


@pytest.fixture(scope="module")
def synth_24(tmp_path_factory):
    """24 synthetic train images at 260 x 352: enough samples for 4 folds of two cell types."""
    from kit.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth24") / "data", n_train=24, n_test=2, seed=5,
                        shape=(260, 352))


def test_held_out_fold_is_seen_by_no_fold_model_and_scores_the_ensemble(synth_24, tmp_path):
    """--held-out 3 of 4 folds: the three fold models neither train, validate nor score on fold
    3; at the end the fold ensemble and each fold model predict it, and held_out.json holds the
    kit.cv MAP of each prediction, the mean of the fold models and the paired gain; a rerun
    reuses every score."""
    out = tmp_path / "ho"
    args = ["kit.train_folds", "baseline", "--data", synth_24, "--n-folds", 4, "--held-out", 3,
            "--out", out, "--quiet"]
    done = run_module(*args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    folds = dict(row for row in csv.reader(open(out / "folds.csv")) if row[0] != "id")
    held = {i for i, f in folds.items() if f == "3"}
    assert held and set(_ids(out / "oof.csv")) == set(_ids(synth_24 / "train.csv")) - held
    for k in (0, 1, 2):
        run = out / f"fold{k}"
        used = set(_ids(run / "folds.csv")) | set(_ids(run / "oof.csv"))
        used |= set((run / "val.csv").read_text().split()[1:])
        assert used and not used & held                       # fold 3 reached no fold run
        assert json.loads((run / "params.json").read_text())["set_aside"] == 3
    assert not (out / "fold3").exists()
    result = json.loads((out / "held_out.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["fold ensemble", "fold 0 model", "fold 1 model", "fold 2 model",
                     "mean of the fold models"]
    assert result["n_images"] == len(held)
    for row, folder in zip(result["rows"], ["ensemble", "fold0", "fold1", "fold2"]):
        pred = out / "held_out" / folder / "predicted.csv"
        assert set(_ids(pred)) == held
        cv_json = tmp_path / f"{folder}.json"
        scored = run_module("kit.cv", "--gt", synth_24, "--pred", pred, "--folds", out / "folds.csv",
                            "--fold", 3, "--json", cv_json, "--quiet")
        assert scored.returncode == 0, scored.stderr
        assert row["map"] == pytest.approx(json.loads(cv_json.read_text())["map"], abs=1e-12)
    singles = [r["map"] for r in result["rows"][1:4]]
    assert result["rows"][4]["map"] == pytest.approx(sum(singles) / 3)
    assert result["gain_over_mean_single"] == pytest.approx(result["rows"][0]["map"] - sum(singles) / 3)
    assert result["gain_over_best_single"] == pytest.approx(result["rows"][0]["map"] - max(singles))
    assert (out / "held_out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| fold ensemble |" in (out / "held_out.md").read_text() and "| fold ensemble |" in done.stdout
    again = run_module(*args)
    assert again.returncode == 0 and again.stdout.count("reused the scores of") == 4


def test_held_out_and_set_aside_errors_name_the_fold(synth_dir, tmp_path):
    done = run_module("kit.train_folds", "baseline", "--data", synth_dir, "--n-folds", 4,
                      "--held-out", 7, "--out", tmp_path / "a", "--quiet")
    assert done.returncode == 2 and "--held-out 7: fold 7: no labelled image in that fold" in done.stderr
    assert not (tmp_path / "a").exists()
    done = run_module("kit.train_folds", "baseline", "--data", synth_dir, "--n-folds", 2,
                      "--held-out", 1, "--out", tmp_path / "b", "--quiet")
    assert done.returncode == 2 and "--held-out needs 3 folds or more" in done.stderr
    done = run_module("kit.train", "baseline", "--data", synth_dir, "--n-folds", 4, "--fold", 2,
                      "--set-aside", 2, "--out", tmp_path / "c", "--quiet")
    assert done.returncode == 2 and "--set-aside 2: it is the --fold this run holds out" in done.stderr
    done = run_module("kit.train", "baseline", "--data", synth_dir, "--n-folds", 4, "--fold", 0,
                      "--set-aside", 9, "--out", tmp_path / "d", "--quiet")
    assert done.returncode == 2 and "--set-aside 9: fold 9: no labelled image" in done.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
