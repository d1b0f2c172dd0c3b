"""tools.demo on a tiny run: one line per step, the log file, the final table, the figure."""
from __future__ import annotations

import json

from tests.conftest import run_module


def test_tiny_demo_ends_with_the_table_and_the_figure(tmp_path):
    out = tmp_path / "demo"
    done = run_module("tools.demo", "--out", out, "--n-train", "8", "--n-test", "2",
                      "--models", "baseline", "--no-offline")
    assert done.returncode == 0, done.stdout + done.stderr
    screen = done.stdout
    # per-step lines on the screen, per-step output in the log
    assert "[1] synthetic competition data ..." in screen and "[3] train baseline" in screen
    log = (out / "demo.log").read_text()
    assert "=== [3] train baseline" in log and "--- exit 0" in log
    assert "cell-type classifier held-out accuracy" in log and "accuracy" not in screen
    # the final table: header, one row per model, the shipped model, the outputs
    results = json.loads((out / "results.json").read_text())
    row = results["models"]["baseline"]
    assert 0.0 <= row["map"] <= 1.0 and 0.0 <= row["ap50"] <= 1.0 and row["minutes"] > 0
    assert results["shipped"] == "baseline" and results["test"] is None
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:2] == ["model", "OOF MAP"] and cells[-2:] == ["AP@0.5", "kit.train min"]
    assert set(cells[2:-2]) == set(row["by_cell_type"])
    assert f"| baseline | {row['map']:.3f} |" in table and table.strip() in screen
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
