"""benchmarks.bench: the --quick run works end to end and its peer-agreement checks pass.

Timing targets are not asserted here (they depend on the machine and its load); the bench
reports them. Only the synthetic-data helpers get direct unit tests.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import bench


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--no-progress", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    return proc, out


def test_quick_run_exits_0(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.exists()
    for heading in ("Peer agreement", "Timings", "Targets"):
        assert heading in proc.stdout


def test_quick_json_fields(quick_run):
    _, out = quick_run
    res = json.loads(out.read_text())
    assert res["config"]["quick"] is True
    assert res["config"]["n_images"] == bench.QUICK["n_images"]
    assert set(res["timings"]) == {"score", "encode", "decode", "score_rle"}
    assert set(res["timings"]["score_rle"]) == {"kit", "notebook"}
    assert res["timings"]["score_rle"]["kit"]["n_images"] == bench.QUICK["rle_images"]
    assert res["timings"]["score_rle"]["notebook"]["n_images"] == bench.QUICK["notebook_rle_images"]
    rd = res["rle_dataset"]
    assert rd["n_images"] == bench.QUICK["rle_images"] and rd["gt_masks"] > 0
    assert 0.0 <= rd["kit_score_min"] <= rd["kit_score_mean"] <= rd["kit_score_max"] <= 1.0
    assert rd["kit_cv_wall_s"] > 0
    assert set(res["timings"]["score"]) == {"kit", "floor", "hist2d", "cellpose"}
    assert set(res["timings"]["encode"]) == {"kit", "notebook", "pycocotools"}
    assert set(res["timings"]["decode"]) == {"kit", "notebook", "pycocotools"}
    for impls in res["timings"].values():
        for t in impls.values():
            assert t["ms_per_image"] > 0 and t["ratio_to_kit"] > 0
            assert len(t["pass_ms_per_image"]) == bench.QUICK["repeat"]
    assert res["timings"]["score"]["cellpose"]["n_images"] == bench.QUICK["cellpose_images"]
    assert [(t["task"], t["peer"]) for t in res["targets"]] == [
        (task, peer) for task, peer, _, _ in bench.TARGETS]
    for t in res["targets"]:
        assert isinstance(t["passed"], bool) and t["measured"] > 0
    assert set(res["kit_peak_memory_mb"]) == {"score", "score_rle", "encode", "decode"}


def test_quick_peer_checks_passed(quick_run):
    _, out = quick_run
    res = json.loads(out.read_text())
    names = [c["name"] for c in res["checks"]]
    assert len(names) == 6
    for c in res["checks"]:
        assert c["passed"], c
        assert c["n_mismatch"] == 0 and c["n_compared"] > 0
    assert res["all_checks_passed"] is True
    score = {c["name"]: c for c in res["checks"] if c["unit"] == "image-thresholds"}
    assert score["score: kit == histogram2d"]["n_compared"] == 10 * bench.QUICK["n_images"]


def test_cell_type_order_keeps_the_mix_in_every_prefix():
    order = bench.cell_type_order(200)
    share = {t: v["images"] / sum(s["images"] for s in bench.CELL_MIX.values())
             for t, v in bench.CELL_MIX.items()}
    for n in (3, 10, 40, 200):
        for t, p in share.items():
            assert abs(order[:n].count(t) - p * n) < 1.0 + 1e-9
    assert set(order[:3]) == set(bench.CELL_MIX)


@pytest.mark.parametrize("cell_type", list(bench.CELL_MIX))
def test_make_pair(cell_type):
    spec = bench.CELL_MIX[cell_type]
    gt, pred = bench.make_pair(np.random.default_rng(1), cell_type)
    assert gt.shape == pred.shape == (520, 704) and gt.dtype == pred.dtype == np.int32
    n_gt = len(np.unique(gt)) - 1
    assert 1 <= n_gt <= spec["n_max"]
    assert pred.max() > 0
    # same seed, same images
    gt2, pred2 = bench.make_pair(np.random.default_rng(1), cell_type)
    assert np.array_equal(gt, gt2) and np.array_equal(pred, pred2)


def test_perturbed_rles_are_valid_and_overlap():
    """The score_rle prediction: valid RLEs of the same image, masks moved and repeated, so
    the list overlaps itself and scores between 0 and 1 against its source."""
    from benchmarks import overlap as bench_overlap
    from kit import metric, rle

    gt, _ = bench.make_pair(np.random.default_rng(2), "shsy5y")
    gt_rles = rle.encode_labels(gt)
    pairs = bench_overlap.synthetic_pairs([("shsy5y", gt, None)], seed=4)
    (_, cell_type, shape, gt_list, pred_list), = pairs
    assert cell_type == "shsy5y" and shape == gt.shape and gt_list[:len(gt_rles)] == gt_rles
    assert len(gt_list) > len(gt_rles)  # a few GT masks repeated, as in real GT
    rle.parse_runs(pred_list, shape)  # valid: sorted, in the image
    stack = rle.decode_stack(pred_list, shape)
    assert (stack.sum(axis=0) > 1).any()  # the prediction overlaps itself
    s = metric.image_score(gt_list, pred_list, shape)
    assert 0.2 < s.score < 1.0 and s.n_pred == len(pred_list)


def test_interleaved_keeps_the_mix_in_every_prefix():
    from benchmarks.overlap import interleaved

    pairs = [(str(i), t) for i, t in enumerate(["cort"] * 6 + ["astro"] * 3 + ["shsy5y"] * 3)]
    order = [t for _, t in interleaved(pairs)]
    assert sorted(order) == sorted(p[1] for p in pairs)
    assert set(order[:3]) == {"cort", "astro", "shsy5y"} and order[:4].count("cort") == 2


def test_relabel_sequential():
    x = np.array([[0, 7, 7], [3, 0, 9]], np.int64)
    assert bench.relabel_sequential(x).tolist() == [[0, 2, 2], [1, 0, 3]]
    assert bench.relabel_sequential(np.array([[5, 5], [8, 5]])).tolist() == [[1, 1], [2, 1]]
    assert bench.relabel_sequential(x).dtype == np.int32
