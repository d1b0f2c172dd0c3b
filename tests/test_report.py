"""python -m kit.report end to end on real images: train, nested tuning, ensembles, report files;
the held-out images never reach training, validation or tuning; a rerun reuses every stage.

The baseline and a tiny Mask R-CNN keep it to minutes; Cellpose goes through the same stages
(the family protocol: tests/test_family.py) and trains on real images in test_real_models.py."""
import json
import os

import numpy as np
import pytest

from tests.conftest import TINY_MASKRCNN, needs_real_data, real_images, real_train_dir, run_module

pytestmark = needs_real_data

# ResNet-18 for speed, otherwise test_maskrcnn's tiny config
TINY_MASKRCNN = TINY_MASKRCNN.replace("model:\n", "model:\n  backbone_depth: 18\n", 1)

TINY_CELLPOSE = """
diam_mean: 17.0
train: {epochs: 1, batch_size: 4, bsize: 64, warmup_epochs: 0, nimg_per_epoch: 4, save_every: 1}
size_model: {enabled: false}
inference: {augment: false}
cell_types:
  shsy5y: {diameter: median}
  astro: {diameter: median}
  cort: {diameter: median}
"""


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    """12 real images (6 cort, 4 astro, 2 shsy5y) linked into a temp competition directory,
    and a folds.csv: 2 folds, each cell type in both."""
    chosen = real_images({"cort": 6, "astro": 4, "shsy5y": 2})
    root = real_train_dir(tmp_path_factory.mktemp("report") / "data", chosen)
    seen: dict[str, int] = {}
    folds = ["id,fold"]
    for id_, ct in chosen.items():
        folds.append(f"{id_},{seen.get(ct, 0) % 2}")
        seen[ct] = seen.get(ct, 0) + 1
    (root.parent / "folds.csv").write_text("\n".join(folds) + "\n")
    (root.parent / "maskrcnn.yaml").write_text(TINY_MASKRCNN)
    (root.parent / "cellpose.yaml").write_text(TINY_CELLPOSE)
    return root


def _report_args(real_dir, out):
    cfg = real_dir.parent
    return ["kit.report", "--data", real_dir, "--folds", cfg / "folds.csv", "--held-out", 1,
            "--out", out, "--models", "baseline", "maskrcnn",
            "--config", f"maskrcnn={cfg / 'maskrcnn.yaml'}", "--budget", "maskrcnn=0.2",
            "--tta", "id,hflip", "--quiet"]


@pytest.fixture(scope="module")
def report(real_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_out") / "out"
    done = run_module(*_report_args(real_dir, out))
    assert done.returncode == 0, done.stderr + done.stdout
    return out, done


def test_report_files_and_rows(report):
    out, done = report
    doc = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in doc["rows"]]
    assert names == ["baseline", "baseline tuned", "maskrcnn", "maskrcnn tuned", "ensemble",
                     "ensemble tuned", "ensemble_tta", "ensemble_tta tuned"]
    for r in doc["rows"]:
        assert 0.0 <= r["map"] <= 1.0 and len(r["ap"]) == 10 and r["n_images"] == 6
        assert r["map"] == pytest.approx(np.mean(r["ap"]))
        assert set(r["by_cell_type"]) == {"cort", "astro", "shsy5y"}
        assert r["infer_seconds_per_image"] > 0
        errors = r["errors_by_cell_type"]["cort"]
        assert errors["fn_merged"] + errors["fn_split"] + errors["fn_missed"] + errors["fn_outline"] == errors["fn"]
    # "as trained" is what kit.train scored on the same held-out images (the family protocol;
    # the baseline has no cell-type rule of its own), and the report quotes kit.train's scores
    oof = json.loads((out / "models" / "baseline" / "oof_score.json").read_text())
    assert doc["rows"][0]["map"] == pytest.approx(oof["map"], abs=1e-9)
    for m in ("baseline", "maskrcnn"):
        oof = json.loads((out / "models" / m / "oof_score.json").read_text())
        assert doc["kit_train_oof_map"][m] == oof["map"]
    assert {t["target"] for t in doc["targets"]} >= {"best single model MAP >= 0.20"}
    md = (out / "report.md").read_text()
    assert "| maskrcnn tuned |" in md and "FN merged" in md and "Targets:" in md
    for m in ("baseline", "maskrcnn"):   # trained side by side: the cores shared out
        threads = json.loads((out / "models" / m / "params.json").read_text())["cpu_threads"]
        assert doc["training"][m]["threads"] == threads == max(1, (os.cpu_count() or 1) // 2)
        assert not doc["training"][m]["reused"]
        assert f"{m} {doc['training'][m]['seconds'] / 60:.1f} min, {threads} CPU thread" in md
    for png in (out / "report_map.png", out / "figures" / "best_worst.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[report" in done.stdout and "done:" in done.stdout


def test_held_out_images_never_choose(report, real_dir):
    """Nested rule: held-out ids are in no training / validation split and in no tuning cache."""
    out, _ = report
    folds = dict(line.split(",") for line in (real_dir.parent / "folds.csv").read_text().split()[1:])
    held_out = {i for i, k in folds.items() if k == "1"}
    val = set()
    for m in ("baseline", "maskrcnn"):
        ids = (out / "models" / m / "val.csv").read_text().split()[1:]
        assert ids and not held_out & set(ids)
        val = set(ids) if not val else val
        assert set(ids) == val    # one validation split for every model
        log = [json.loads(line) for line in (out / "models" / m / "train.log").read_text().splitlines()]
        split = next(e for e in log if e["event"] == "split")
        assert split["n_held_out"] == len(held_out) and split["n_val"] == len(val)
    for name in ("baseline", "maskrcnn", "ensemble", "ensemble_tta"):
        tuned_on = {i["id"] for i in json.loads((out / "cache" / name / "val" / "cache.json").read_text())["images"]}
        assert tuned_on == val
        scored = {i["id"] for i in json.loads((out / "cache" / name / "held_out" / "cache.json").read_text())["images"]}
        assert scored == held_out
        assert (out / "models" / name / "tuned.yaml").is_file()


def test_rerun_reuses_every_stage(report, real_dir):
    out, _ = report
    before = {p: p.stat().st_mtime_ns for p in [*(out / "models").glob("*/model.json"),
                                                *(out / "cache").glob("*/*/cache.json")]}
    done = run_module(*_report_args(real_dir, out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("reused the finished run") == 2 and done.stdout.count("tune ") == 4
    assert all("reused" in line for line in done.stdout.splitlines() if line.split("] ")[-1].startswith("tune "))
    assert {p: p.stat().st_mtime_ns for p in before} == before
    training = json.loads((out / "report.json").read_text())["training"]
    assert all(t["reused"] and t["threads"] >= 1 for t in training.values())
    assert "(reused: an earlier run trained it)" in (out / "report.md").read_text()


def test_a_finished_run_matches_the_config_content_it_trained_with(report, real_dir, tmp_path):
    """kit.train records the SHA-256 of --config's content in params.json; a report reuses the
    run for a config of that content wherever it lies, and not once the file says otherwise."""
    import hashlib

    from kit.report import Plan, finished_run_matches

    out, _ = report
    params = json.loads((out / "models" / "maskrcnn" / "params.json").read_text())
    trained = real_dir.parent / "maskrcnn.yaml"
    assert params["config_sha256"] == hashlib.sha256(trained.read_bytes()).hexdigest()
    copy = tmp_path / "same.yaml"
    copy.write_bytes(trained.read_bytes())
    moved = Plan(real_dir.resolve(), (real_dir.parent / "folds.csv").resolve(), 1, out.resolve(),
                 ("baseline", "maskrcnn"), {"maskrcnn": copy}, {"maskrcnn": 0.2}, ("maskrcnn",),
                 ("id", "hflip"), params["val_fraction"], params["seed"], 1, 1, False)
    assert finished_run_matches(moved, "maskrcnn")
    copy.write_text(trained.read_text().replace("lr: 0.002", "lr: 0.003"))
    assert not finished_run_matches(moved, "maskrcnn")


@pytest.mark.parametrize("extra, message", [
    (["--budget", "maskrcnn"], "expected MODEL=VALUE"),
    (["--budget", "detectron=3"], "detectron is not in --models"),
    (["--models", "ensemble"], "cannot be trained"),
    (["--tta", "id,spin"], "unknown view"),
    (["--livecell", "nope.json"], "needs a COCO json"),
    (["--held-out", "9"], "--held-out 9: fold 9: no labelled image in that fold of"),
])
def test_bad_options_exit_2_before_anything_is_written(real_dir, tmp_path, extra, message):
    out = tmp_path / "out"
    done = run_module("kit.report", "--data", real_dir, "--folds", real_dir.parent / "folds.csv",
                      "--held-out", 1, "--out", out, *extra)
    assert done.returncode == 2 and message in done.stderr
    assert not out.exists()


def test_missing_folds_file_is_named(real_dir, tmp_path):
    done = run_module("kit.report", "--data", real_dir, "--folds", tmp_path / "nope.csv",
                      "--held-out", 1, "--out", tmp_path / "out")
    assert done.returncode == 2 and "nope.csv" in done.stderr


def test_detectron2_goes_through_every_stage(real_dir, tmp_path):
    """--models detectron2 (when detectron2 is installed): its CPU recipe unless --config says
    otherwise, trained, tuned on the validation split, scored on the held-out fold, and an
    ensemble member like the torchvision model."""
    pytest.importorskip("detectron2")
    from tests.test_detectron2 import TINY_D2

    from kit.report import RECIPES

    assert RECIPES["detectron2"] == ("detectron2_cpu_real.yaml", 40.0)
    tiny = tmp_path / "d2.yaml"
    tiny.write_text(TINY_D2)
    out = tmp_path / "out"
    done = run_module("kit.report", "--data", real_dir, "--folds", real_dir.parent / "folds.csv",
                      "--held-out", 1, "--out", out, "--models", "maskrcnn", "detectron2",
                      "--config", f"maskrcnn={real_dir.parent / 'maskrcnn.yaml'}",
                      "--config", f"detectron2={tiny}", "--budget", "maskrcnn=0.2",
                      "--budget", "detectron2=0.2", "--tta", "none", "--quiet")
    assert done.returncode == 0, done.stderr + done.stdout
    doc = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in doc["rows"]] == ["maskrcnn", "maskrcnn tuned", "detectron2",
                                                "detectron2 tuned", "ensemble", "ensemble tuned"]
    assert all(0.0 <= r["map"] <= 1.0 and r["n_images"] == 6 for r in doc["rows"])
    params = json.loads((out / "models" / "detectron2" / "params.json").read_text())
    assert params["time_budget"] == 0.2 and params["config"] == str(tiny.resolve())
    assert (out / "models" / "detectron2" / "tuned.yaml").is_file()
    assert "| detectron2 tuned |" in (out / "report.md").read_text()
