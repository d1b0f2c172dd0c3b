"""benchmarks.memory: the competition directories it measures on, and its slopes."""
from __future__ import annotations

from benchmarks.memory import slopes, subset_dir, with_copies
from kit.data import read_competition_dir, read_folds_csv


def test_subset_dir_with_copies_is_a_readable_competition_dir(synth_dir, tmp_path):
    ids = [r.id for r in read_competition_dir(synth_dir).train]
    train, held = with_copies(ids[:3], 7), with_copies(ids[3:5], 2)
    assert train[:3] == ids[:3] and train[3] == f"{ids[0]}~1" and len(set(train)) == 7
    d = subset_dir(synth_dir, train, held, tmp_path / "d")
    records = {r.id: r for r in read_competition_dir(d).train}
    assert set(records) == set(train) | set(held)
    original = {r.id: r for r in read_competition_dir(synth_dir).train}[ids[0]]
    copy = records[f"{ids[0]}~2"]
    assert copy.rles == original.rles and (copy.load_image() == original.load_image()).all()
    folds = read_folds_csv(d / "folds.csv")
    assert {i for i, f in folds.items() if f == 1} == set(held)


def test_slopes_are_mb_per_extra_image():
    rows = [{"n_train": 30, "n_held_out": 4, "peak_rss_mb": 1000.0},
            {"n_train": 120, "n_held_out": 4, "peak_rss_mb": 1045.0},
            {"n_train": 30, "n_held_out": 20, "peak_rss_mb": 1160.0}]
    assert slopes(rows) == {"mb_per_train_image": 0.5, "mb_per_held_out_image": 10.0}
