"""kit.models.memory_plan: the estimate kit.train prints before a run, each family's own."""
from __future__ import annotations

import dataclasses
import json

import pytest

from kit.data import read_competition_dir
from kit.models.memory_plan import MB, MemoryPlan, params_mb, records_mb
from kit.models.registry import family
from tests.conftest import run_module

torch = pytest.importorskip("torch")


def test_records_mb_counts_the_rle_strings(synth_dir):
    records = read_competition_dir(synth_dir).train
    one = records_mb(records[:1])
    assert one == pytest.approx((600 + sum(57 + len(s) for s in records[0].rles)) / MB)
    longer = dataclasses.replace(records[0], rles=records[0].rles * 3)
    assert records_mb([longer]) - 600 / MB == pytest.approx(3 * (one - 600 / MB))
    assert params_mb(1_000_000, "adamw") == pytest.approx(16e6 / MB)
    assert params_mb(1_000_000, "sgd") == pytest.approx(12e6 / MB)


def test_cellpose_cache_size_is_what_the_targets_take_on_disk(synth_dir, tmp_path, monkeypatch):
    from kit.models.cellpose import data as kcp_data

    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "cache"))
    fam = family("cellpose")
    config = fam.load_config(None)
    records = read_competition_dir(synth_dir).train[:3]
    plan = fam.memory_plan(config, records, [], ())
    assert plan.cache_images == 3 and plan.cache_dir == str(kcp_data.targets_cache_dir())
    assert plan.cache_state() == {"cache_present_mb": 0.0, "disk_free_mb": plan.cache_state()["disk_free_mb"]}
    kcp_data._prepare(records, 1, torch.device("cpu"), "test", False)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file()) / MB
    assert plan.cache_mb == pytest.approx(on_disk, rel=0.01)
    assert plan.cache_state()["cache_present_mb"] == pytest.approx(on_disk, abs=0.1)
    # the default (GPU) recipe trains on 8 x 224 px crops; its SizeModel's 16 x 512 px of styles
    # weigh less; a SizeModel batch of 64 would outweigh both
    assert plan.basis.startswith("training: 401k px")
    big = dataclasses.replace(config, size_model=dataclasses.replace(config.size_model, batch_size=64))
    assert fam.memory_plan(big, records, [], ()).basis.startswith("SizeModel: 16777k px")
    cpu = fam.memory_plan(fam.load_config("kit/configs/cellpose_cpu.yaml"), records, [], ())
    assert cpu.activations_mb < plan.activations_mb / 2
    assert "target cache" in plan.summary() and str(tmp_path / "cache") in plan.summary()


def test_maskrcnn_plan_counts_its_network_and_its_largest_pass(synth_dir):
    from kit.models.maskrcnn.network import build_network

    fam = family("maskrcnn")
    records = read_competition_dir(synth_dir).train
    demo = fam.load_config("kit/configs/maskrcnn_cpu_demo.yaml")
    plan = fam.memory_plan(demo, records, [], ())
    n = sum(p.numel() for p in build_network(demo.model).parameters())
    assert plan.params_mb == pytest.approx(params_mb(n, "adamw"))
    # a specialist stage (train.specialize) also holds the all-type weights it starts from
    special = dataclasses.replace(demo, train=dataclasses.replace(demo.train, specialize={"astro": 2}))
    assert fam.memory_plan(special, records, [], ()).params_mb == pytest.approx(
        params_mb(n, "adamw") + n * 4 / 2 ** 20)
    assert plan.cache_mb == 0 and plan.cache_dir is None and "target cache" not in plan.summary()
    # two 256-px crops are the larger pass; with the mask head on 200 boxes at once one
    # validation image at 520 px is; full 800-px images train
    assert plan.basis.startswith("training: 131k px")
    chunky = dataclasses.replace(demo, model=dataclasses.replace(demo.model, mask_chunk=200))
    assert fam.memory_plan(chunky, records, [], ()).basis.startswith("validation: 366k px")
    assert fam.memory_plan(fam.load_config(None), records, [], ()).basis.startswith("training")


def test_on_cuda_the_network_is_gpu_memory():
    plan = MemoryPlan("x", "cuda", data_mb=10, libs_mb=700, params_mb=100, activations_mb=900)
    assert plan.peak_mb == 710 and plan.gpu_mb == 1000 and "GPU memory ~1000 MB" in plan.summary()
    cpu = dataclasses.replace(plan, device="cpu")
    assert cpu.peak_mb == 1710 and cpu.gpu_mb == 0 and "GPU" not in cpu.summary()


def test_kit_train_prints_and_logs_the_plan_and_the_measured_peak_is_of_its_order(synth_dir, tmp_path):
    out = tmp_path / "run"
    done = run_module("kit.train", "cellpose", "--data", synth_dir, "--n-folds", 3, "--fold", 0,
                      "--out", out, "--config", "kit/configs/cellpose_smoke.yaml", "--quiet",
                      "--epochs", 1)
    assert done.returncode == 0, done.stderr
    assert "memory plan (cellpose, cpu): peak RSS ~" in done.stderr
    events = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    plan = next(e for e in events if e["event"] == "memory_plan")
    assert plan["family"] == "cellpose" and plan["cache_images"] > 0 and plan["disk_free_mb"] > 0
    measured = max(e["peak_rss_mb"] for e in events)
    assert 0.5 < measured / plan["peak_mb"] < 2.0, (measured, plan)
