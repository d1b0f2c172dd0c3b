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
    repeats = rows + [{"n_train": 30, "n_held_out": 4, "peak_rss_mb": 1300.0},  # an outlier
                      {"n_train": 30, "n_held_out": 4, "peak_rss_mb": 1009.0},
                      {"n_train": 120, "n_held_out": 4, "peak_rss_mb": 1045.0}]
    assert slopes(repeats) == {"mb_per_train_image": 0.4, "mb_per_held_out_image": 9.438}


def test_coco_read_benchmark_json_is_copies_of_its_source(tmp_path):
    """benchmarks.coco_read's input: the source's images and annotations repeated under new
    ids, read by read_coco into the same masks, copy after copy."""
    from benchmarks.coco_read import replicated_json
    from kit.data import read_coco
    from kit.synth_livecell import JSON_NAME, make_livecell

    lc = make_livecell(tmp_path / "lc", 3, shape=(48, 64))
    source = read_coco(lc / JSON_NAME)
    n = replicated_json(lc / JSON_NAME, 4, tmp_path / "x4.json")
    copies = read_coco(tmp_path / "x4.json")
    assert n == 4 * sum(len(r.rles) for r in source) > 0
    assert [r.rles for r in copies] == [r.rles for r in source] * 4
    assert len({r.id for r in copies}) == 12


def test_livecell_subset_and_config_are_what_kit_train_reads(tmp_path):
    """The --livecell check's inputs: a json of the first n synthetic LIVECell images with only
    their annotations, and the CPU config with a LIVECell stage of a few steps."""
    from benchmarks.memory import LIVECELL_STEPS, livecell_config, livecell_subset
    from kit.data import read_coco
    from kit.models.registry import family
    from kit.synth_livecell import JSON_NAME, make_livecell

    lc = make_livecell(tmp_path / "lc", 6, shape=(48, 64))
    sub = livecell_subset(lc / JSON_NAME, 4, tmp_path / "four.json")
    records = read_coco(sub, lc / "images", source="livecell")
    assert [r.id for r in records] == [r.id for r in read_coco(lc / JSON_NAME, lc / "images")][:4]
    for model in ("cellpose", "maskrcnn", "detectron2"):
        cfg = family(model).load_config(livecell_config(model, tmp_path / f"{model}.yaml"))
        assert cfg.train.livecell_epochs == 1 == LIVECELL_STEPS[model]["train"]["livecell_epochs"]
    assert cfg.train.livecell_max_iter == 3 and cfg.detectron2["SOLVER.MAX_ITER"] == 3
    assert cfg.detectron2["MODEL.RESNETS.DEPTH"] == 18   # the CPU config's keys stay


def test_step_time_reads_both_trees_step_logs(tmp_path):
    from benchmarks.step_time import step_seconds, unpack

    (tmp_path / "cp").mkdir()
    (tmp_path / "cp" / "epochs.csv").write_text(
        "epoch,stage,stage_epoch,lr,train_loss,val_loss,seconds,n_crops\n"
        "1,train,1,0.1,1.0,,20.0,32\n2,train,2,0.1,1.0,,12.0,30\n")
    assert step_seconds("cellpose", tmp_path / "cp") == [3.0]   # epoch 1 left out; 30 crops = 4 batches
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr" / "train_iter.csv").write_text(
        "stage,iteration,seconds\n" + "".join(f"sartorius,{k},{k}.5\n" for k in range(1, 7)))
    assert step_seconds("maskrcnn", tmp_path / "mr") == [4.5, 5.5, 6.5]
    tree = unpack("HEAD", tmp_path / "head")
    assert (tree / "kit" / "train.py").is_file() and (tree / "kit" / "configs" / "cellpose_cpu.yaml").is_file()


def test_processes_benchmark_configs_fix_the_global_batch(tmp_path):
    """benchmarks.processes: the CPU configs with a fixed amount of training and one global
    batch for 1 process x N threads and N processes alike."""
    from benchmarks.processes import CORES, config_file
    from kit.models.registry import family

    path, per_step = config_file("maskrcnn", 5, tmp_path / "m.yaml")
    cfg = family("maskrcnn").load_config(path)
    assert per_step == CORES == cfg.train.batch_size and cfg.train.max_iters_per_epoch == 5
    path, per_step = config_file("cellpose", 5, tmp_path / "c.yaml")
    cfg = family("cellpose").load_config(path)
    assert per_step == 8 == cfg.train.batch_size and cfg.train.nimg_per_epoch == 40
    assert not cfg.size_model.enabled
