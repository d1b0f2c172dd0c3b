"""tools.demo on a tiny run: one line per step, the log file, the final table, the figure."""
from __future__ import annotations

import json

from tests.conftest import run_module
from tools.demo import training_status


def test_tiny_demo_ends_with_the_table_and_the_figure(tmp_path):
    out = tmp_path / "demo"
    done = run_module("tools.demo", "--out", out, "--n-train", "8", "--n-test", "2",
                      "--budget", "0.1", "--tune", "--no-offline")
    assert done.returncode == 0, done.stdout + done.stderr
    screen = done.stdout
    # per-step lines on the screen, per-step output in the log; the learned models side by side
    assert "[1] synthetic competition data ..." in screen and "[3] train baseline" in screen
    for n, model in ((4, "cellpose"), (5, "maskrcnn")):
        assert f"[{n}] train {model} (fold 0 held out), score out of fold ... started" in screen
        assert f"[{n}] train {model} (fold 0 held out), score out of fold: done in" in screen
    log = (out / "demo.log").read_text()
    for n, model in ((3, "baseline"), (4, "cellpose"), (5, "maskrcnn")):
        assert f"=== [{n}] train {model}" in log and f"{model} fold 0:" in log
        # every model's post-processing was tuned on the validation split, not the held-out fold
        assert (out / "models" / model / "tuned.yaml").is_file()
        selection = json.loads((out / "models" / model / "oof_score.json").read_text())["selection"]
        assert "tuned.yaml" in selection["validation_chooses"]
    assert log.count("post-processing tuned on the") == 3
    assert log.count("=== [") == log.count("--- exit 0") == 10  # synth .. figure, all green
    assert "cell-type classifier held-out accuracy" in log and "accuracy" not in screen
    # the final table: header, one row per model, the shipped model, the outputs
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["baseline", "cellpose", "maskrcnn"]
    for row in results["models"].values():
        assert 0.0 <= row["map"] <= 1.0 and 0.0 <= row["ap50"] <= 1.0 and row["minutes"] > 0
    best = max(results["models"], key=lambda m: results["models"][m]["map"])
    assert results["shipped"] == best and results["test"] is None
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:2] == ["model", "OOF MAP"] and cells[-2:] == ["AP@0.5", "kit.train min"]
    assert set(cells[2:-2]) == {ct for r in results["models"].values() for ct in r["by_cell_type"]}
    for model, row in results["models"].items():
        assert f"| {model} | {row['map']:.3f} |" in table
    assert table.strip() in screen
    # the status line of a training run, read from its files (also while they are written)
    assert training_status(out / "models" / "cellpose").startswith("epoch ")
    assert "val MAP" in training_status(out / "models" / "maskrcnn")
    assert training_status(out / "models" / "baseline") == "starting"
    half = out / "models" / "cellpose" / "epochs.csv"
    half.write_text(half.read_text().splitlines()[0] + "\n3,train,3,0.005,0.4")
    assert training_status(half.parent) == "epoch 3, loss 0.40"
    half.write_text(half.read_text().splitlines()[0] + "\n3,tr")
    assert training_status(half.parent) == "starting"
    spec = tmp_path / "specialist"
    spec.mkdir()
    (spec / "eval.csv").write_text("stage,epoch,map\nsartorius,4,0.21\nspecialist:astro,2,0.04\n")
    assert training_status(spec) == "val MAP 0.04 (astro specialist)"
    figure = results["outputs"]["figure (TP green, FP red, FN blue)"]
    assert figure.endswith(".png") and (tmp_path / figure).is_file()
    assert (out / "eda" / "report.md").is_file()


def test_demo_help_says_how_to_run_on_real_data():
    done = run_module("tools.demo", "--help")
    assert done.returncode == 0 and "--data" in done.stdout
    assert "sartorius-cell-instance-segmentation" in done.stdout.replace("\n", "")


def test_demo_refuses_a_data_folder_without_train_csv(tmp_path):
    done = run_module("tools.demo", "--out", tmp_path / "o", "--data", tmp_path)
    assert done.returncode == 2 and "no train.csv" in done.stderr
    assert not (tmp_path / "o").exists()


def test_kit_demo_is_the_demo_and_says_how_to_use_real_data():
    done = run_module("kit.demo", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m kit.demo")
    assert "--data DIR runs the same path on a competition directory" in " ".join(done.stdout.split())
