"""Training in several processes: ``torchrun --nproc_per_node 2 -m kit.train maskrcnn`` on CPU
(gloo) against one process with the same global batch (gradient accumulation), resume, a killed
rank, and the global batch dealt out by kit.distributed.rank_batches."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kit.distributed import SINGLE, Group, micro_batch, rank_batches
from tests.conftest import REPO, run_module

# R18 on 128-px crops. Every anchor and every proposal is sampled (batch sizes above their
# counts), so the losses do not depend on which process draws the random sample order.
TINY_EXACT = """
model:
  backbone_depth: 18
  train_min_sizes: [128]
  train_max_size: 400
  test_min_size: 128
  test_max_size: 200
  rpn_pre_nms_top_n_train: 300
  rpn_post_nms_top_n_train: 100
  rpn_pre_nms_top_n_test: 300
  rpn_post_nms_top_n_test: 100
  rpn_batch_size_per_image: 1000000
  box_batch_size_per_image: 4096
  box_detections_per_img: 100
train:
  epochs: 1
  batch_size: 2
  accumulate: {accumulate}
  crop: 128
  optimizer: adamw
  lr: 0.0005
  warmup_iters: 0
  max_iters_per_epoch: 3
  num_workers: 0
  eval_max_images: 1
  device: cpu
"""


def torchrun(*args, logs: Path, n: int = 2):
    """``torchrun`` on ``python -m <args>``, its per-rank logs under ``logs`` (by default it
    leaves a ``torchelastic_*`` folder in the system temp dir)."""
    return run_module("torch.distributed.run", "--standalone", "--nproc_per_node", n,
                      "--log-dir", logs, "-m", *args)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train.log").read_text().splitlines()]


def test_rank_batches_deal_the_same_images_whatever_the_processes():
    order = [7, 3, 9, 0, 5, 1, 8, 2, 6, 4]
    one = rank_batches(order, 4, SINGLE)
    assert one == [[[7, 3, 9, 0]], [[5, 1, 8, 2]], [[6, 4]]]   # a DataLoader's batches
    acc = rank_batches(order, 4, SINGLE, accumulate=2)
    assert acc[0] == [[7, 3], [9, 0]] and acc[2] == [[6, 4], [7, 3]]   # filled from the start
    ranks = [rank_batches(order, 4, Group(rank=r, world=2)) for r in (0, 1)]
    assert [ranks[0][k][0] + ranks[1][k][0] for k in range(3)] == [a[0] + a[1] for a in acc]
    four = [rank_batches(order, 4, Group(rank=r, world=2), accumulate=2) for r in (0, 1)]
    assert four[1][1] == [[8], [2]]
    assert micro_batch(8, 2, 2) == 2
    with pytest.raises(ValueError, match=r"batch_size 6 must be a multiple of processes \(2\) x train.accumulate \(2\)"):
        micro_batch(6, 2, 2)


@pytest.fixture(scope="module")
def exact_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_cfg")
    for k in (1, 2):
        (folder / f"acc{k}.yaml").write_text(TINY_EXACT.format(accumulate=k))
    return folder


def test_two_processes_equal_one_process_with_the_same_global_batch(synth_dir, exact_configs, tmp_path):
    """2 gloo processes x 1 image against 1 process x 2 accumulated images: the same losses and
    the same weights after 3 steps, and again after --resume for a second epoch; only rank 0
    wrote (one set of events and rows)."""
    torch = pytest.importorskip("torch")

    def train(out, cfg, *extra, processes=1):
        args = ["kit.train", "maskrcnn", "--data", synth_dir, "--n-folds", 3, "--fold", 0,
                "--config", exact_configs / cfg, "--out", out, "--quiet", *extra]
        done = (torchrun(*args, logs=tmp_path / "torchrun", n=processes) if processes > 1
                else run_module(*args))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    one, two = tmp_path / "one", tmp_path / "two"
    train(one, "acc2.yaml")
    train(two, "acc1.yaml", processes=2)
    for epochs in (1, 2):
        rows1, rows2 = _rows(one / "train_iter.csv"), _rows(two / "train_iter.csv")
        assert [r["iteration"] for r in rows2] == [str(i) for i in range(1, 3 * epochs + 1)]
        for column in ("loss", "loss_classifier", "loss_mask", "loss_objectness", "grad_norm"):
            np.testing.assert_allclose([float(r[column]) for r in rows2],
                                       [float(r[column]) for r in rows1], rtol=1e-5)
        w1 = torch.load(one / "checkpoints" / "last.pt", weights_only=True)
        w2 = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
        assert w1["epoch"] == w2["epoch"] == epochs
        params = [k for k, v in w1["model"].items() if v.is_floating_point() and "running_" not in k]
        for k in params:   # BatchNorm's running statistics are rank 0's own: not compared
            torch.testing.assert_close(w2["model"][k], w1["model"][k], rtol=1e-5, atol=1e-7)
        if epochs == 1:
            train(one, "acc2.yaml", "--resume", "--epochs", 2)
            train(two, "acc1.yaml", "--resume", "--epochs", 2, processes=2)
    events = _events(two)
    stages = [e for e in events if e["event"] == "stage"]
    assert len(stages) == 2 and stages[0]["processes"] == 2 and stages[0]["accumulate"] == 1
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert len(_rows(two / "eval.csv")) == 2
    assert json.loads((two / "params.json").read_text())["processes"] == 2
    assert (two / "oof_score.json").is_file() and (two / "model.json").is_file()


CELLPOSE_EXACT = """
diam_mean: 17.0
train: {{epochs: 2, batch_size: 4, accumulate: {accumulate}, bsize: 64, warmup_epochs: 0,
        nimg_per_epoch: 6, save_every: 1, lr: 0.005}}
size_model: {{enabled: false}}
inference: {{augment: false}}
cell_types:
  shsy5y: {{diameter: median}}
  astro: {{diameter: median}}
  cort: {{diameter: median}}
"""


def test_cellpose_two_processes_equal_one_process_with_the_same_global_batch(synth_dir, tmp_path):
    """Cellpose, 2 gloo processes x 2 crops against 1 process x 2 accumulated micro batches of 2
    (global batch 4; 6 crops an epoch, so the last step is filled up). Each run stops at its time
    budget after epoch 1 and is resumed to epoch 2 (``--resume`` under torchrun): the same epoch
    losses and the same weights after each call; rank 0 alone wrote epochs.csv, the log and the
    model folder."""
    torch = pytest.importorskip("torch")
    runs = {name: tmp_path / name for name in ("one", "two")}
    for epochs, extra in ((1, ("--time-budget", 0)), (2, ("--resume",))):
        for name, accumulate, processes in (("one", 2, 1), ("two", 1, 2)):
            cfg = tmp_path / f"{name}.yaml"
            cfg.write_text(CELLPOSE_EXACT.format(accumulate=accumulate))
            args = ["kit.train", "cellpose", "--data", synth_dir, "--n-folds", 3, "--fold", 0,
                    "--config", cfg, "--out", runs[name], "--quiet", *extra]
            done = (torchrun(*args, logs=tmp_path / "torchrun", n=processes) if processes > 1
                else run_module(*args))
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        rows = {k: _rows(v / "epochs.csv") for k, v in runs.items()}
        assert [r["epoch"] for r in rows["two"]] == [str(e) for e in range(1, epochs + 1)]
        assert [r["n_crops"] for r in rows["two"]] == [r["n_crops"] for r in rows["one"]] == ["8"] * epochs
        np.testing.assert_allclose([float(r["train_loss"]) for r in rows["two"]],
                                   [float(r["train_loss"]) for r in rows["one"]], rtol=1e-5)
        w1 = torch.load(runs["one"] / "checkpoint.pt", weights_only=True)
        w2 = torch.load(runs["two"] / "checkpoint.pt", weights_only=True)
        assert w1["epoch"] == w2["epoch"] == epochs
        for k, v in w1["net"].items():
            if v.is_floating_point() and "running_" not in k:
                torch.testing.assert_close(w2["net"][k], v, rtol=1e-5, atol=1e-6)
    events = [e["event"] for e in _events(runs["two"])]
    assert events.count("cellpose_train") == 2 and events.count("cellpose_resume") == 1
    assert (runs["two"] / "model.json").is_file() and (runs["two"] / "oof_score.json").is_file()


def test_a_family_without_processes_is_refused(synth_dir, tmp_path):
    done = torchrun("kit.train", "baseline", "--data", synth_dir, "--n-folds", 3, "--fold", 0,
                    "--out", tmp_path / "b", "--quiet", logs=tmp_path / "torchrun")
    assert done.returncode != 0
    assert "the baseline model does not train in several processes" in done.stderr
    assert not (tmp_path / "b").exists()


def test_killing_one_rank_ends_the_run(synth_dir, exact_configs, tmp_path):
    """SIGKILL to rank 1 in the middle of training: torchrun stops rank 0 and exits non-zero
    within a minute, naming the failed rank; no model folder is left as if it had finished."""
    long = tmp_path / "long.yaml"
    long.write_text(TINY_EXACT.format(accumulate=1).replace("max_iters_per_epoch: 3", "max_iters_per_epoch: 500"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(tmp_path / "torchrun"),
           "-m", "kit.train", "maskrcnn", "--data", str(synth_dir), "--n-folds", "3", "--fold", "0",
           "--config", str(long), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 180
        while not (out / "train_iter.csv").is_file() or len(_rows(out / "train_iter.csv")) < 2:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        rank1 = [pid for pid in _children(proc.pid) if _environ(pid).get("RANK") == "1"]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        t0 = time.time()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and time.time() - t0 < 120
    assert "Signal 9" in stderr or "SIGKILL" in stderr or "rank: 1" in stderr, stderr[-3000:]
    assert not (out / "oof_score.json").exists()


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(d.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def _environ(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_cpu_autocast_runs_the_mixed_precision_path(synth_dir, tmp_path):
    """train.amp_cpu: bfloat16 autocast on CPU. The first step's losses are those of float32
    to bfloat16's precision, but not identical (autocast was in effect); they stay finite."""
    losses = {}
    for name, amp in (("fp32", "false"), ("bf16", "true")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(TINY_EXACT.format(accumulate=1).replace("max_iters_per_epoch: 3", "max_iters_per_epoch: 2")
                       + f"  amp_cpu: {amp}\n")
        out = tmp_path / name
        done = run_module("kit.train", "maskrcnn", "--data", synth_dir, "--n-folds", 3, "--fold", 0,
                          "--config", cfg, "--out", out, "--quiet")
        assert done.returncode == 0, done.stderr[-3000:]
        stage = next(e for e in _events(out) if e["event"] == "stage")
        assert stage["autocast"] == ("bfloat16" if amp == "true" else None)
        losses[name] = [float(r["loss"]) for r in _rows(out / "train_iter.csv")]
    assert all(np.isfinite(losses["bf16"]))
    assert losses["bf16"][0] != losses["fp32"][0]
    np.testing.assert_allclose(losses["bf16"][0], losses["fp32"][0], rtol=0.05)
