"""kit.tune: search on cached raw outputs (never a network), the tuned YAML, applying it."""
import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kit import rle
from kit.postprocess import Detections
from kit.models.family import load_raw, save_raw
from kit.models.registry import family
from kit.models.tuned import apply_tuned, read_tuned
from kit.tune import load_cache, render, search, tuned_document
from tests.conftest import run_module

torch = pytest.importorskip("torch")

SHAPE = (64, 96)
SQ = 10  # GT cells: SQ x SQ squares


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def write_train_csv(path: Path, gts: dict) -> Path:
    """train.csv rows for ``{id: (cell_type, label image)}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "annotation", "width", "height", "cell_type", "sample_id"])
        for image_id, (ct, labels) in gts.items():
            for r in rle.encode_labels(labels):
                w.writerow([image_id, r, labels.shape[1], labels.shape[0], ct, f"s_{image_id}"])
    return path


def write_cache(cache: Path, kind: str, state: dict, items: dict, fmt: str) -> Path:
    """A cache folder by hand: ``items`` = {id: (cell_type, raw)}, raws of format ``fmt``."""
    (cache / "s0").mkdir(parents=True)
    for image_id, (_, raw) in items.items():
        save_raw(fmt, raw, cache / "s0" / f"{image_id}.npz")
    meta = {"format": 2, "model_type": kind, "model": str(cache / "no_such_model"),
            "sources": [{"format": fmt, "dir": "s0"}], "state": state,
            "images": [{"id": i, "cell_type": ct, "shape": list(SHAPE)} for i, (ct, _) in items.items()]}
    (cache / "cache.json").write_text(json.dumps(meta))
    return cache


def squares(k: int) -> tuple[np.ndarray, list]:
    """GT label image of six squares and their boxes (x0, y0, x1, y1)."""
    labels = np.zeros(SHAPE, np.int32)
    boxes = []
    for n in range(6):
        r, c = 6 + 30 * (n // 3), 6 + 30 * (n % 3) + k
        labels[r:r + SQ, c:c + SQ] = n + 1
        boxes.append([c, r, c + SQ, r + SQ])
    return labels, boxes


def maskrcnn_items():
    """shsy5y: exact detections (0.9) + 4 false positives (0.3) -> the default score .15 keeps
    the FPs; cort: exact detections scored 0.5, under the default .55 -> nothing painted."""
    items, gts = {}, {}
    for k, ct in enumerate(["shsy5y", "shsy5y", "cort", "cort"]):
        labels, boxes = squares(k)
        score = 0.9 if ct == "shsy5y" else 0.5
        fps = [[b[0] + 14, b[1], b[2] + 14, b[3]] for b in boxes[:4]] if ct == "shsy5y" else []
        all_boxes = boxes + fps
        scores = [score] * len(boxes) + [0.3] * len(fps)
        masks = np.full((len(all_boxes), 28, 28), 0.9, np.float32)
        cls = 0 if ct == "shsy5y" else 2
        items[f"img{k}"] = (ct, Detections(all_boxes, scores, [cls] * len(all_boxes), masks, SHAPE))
        gts[f"img{k}"] = (ct, labels)
    return items, gts


@pytest.fixture()
def maskrcnn_cache(tmp_path):
    from kit import config as kconfig
    from kit.postprocess import DEFAULT_CONFIG

    items, gts = maskrcnn_items()
    gt = write_train_csv(tmp_path / "gt" / "train.csv", gts)
    cache = write_cache(tmp_path / "cache", "maskrcnn",
                        {"postprocess": kconfig.to_dict(DEFAULT_CONFIG), "cell_type": "vote"},
                        items, "detections")
    return cache, gt


SMALL_GRID = {"score": (0.1, 0.2, 0.4, 0.6), "nms": (0.3, 0.5), "pixel": (0.45, 0.5),
              "min_area": (0, 80)}


def forbid_networks(monkeypatch):
    """Every way to build or run a network raises."""
    import kit.models
    import kit.models.cellpose.model as kcp_model
    import kit.models.maskrcnn.model as kmr_model

    def boom(*a, **k):
        raise AssertionError("the search ran a model")

    monkeypatch.setattr(kit.models, "load_model", boom)
    monkeypatch.setattr(kmr_model, "build_network", boom)
    monkeypatch.setattr(kmr_model.MaskRCNNModel, "predict_raw", boom)
    monkeypatch.setattr(kmr_model.MaskRCNNModel, "load", boom)
    monkeypatch.setattr(kcp_model, "_new_cellpose_model", boom)
    monkeypatch.setattr(kcp_model.CellposeSegmenter, "load", boom)
    monkeypatch.setattr(kcp_model.CellposeSegmenter, "predict_raw", boom)
    for name in ("maskrcnn", "cellpose", "ensemble", "baseline"):
        monkeypatch.setattr(type(family(name)), "predict_raw", boom)
        monkeypatch.setattr(type(family(name)), "load", boom)


def test_search_improves_maskrcnn_map_without_any_model(maskrcnn_cache, monkeypatch):
    cache, gt = maskrcnn_cache
    forbid_networks(monkeypatch)
    res = search(cache, gt, "maskrcnn", n_jobs=1, grids=SMALL_GRID, log=lambda *a: None)
    sh, co = res.types["shsy5y"], res.types["cort"]
    assert sh.before == pytest.approx(0.6) and co.before == 0.0   # 6 TP / 4 FP; nothing
    assert sh.after == co.after == 1.0
    assert sh.best["score"] > 0.3 and co.best["score"] <= 0.5
    assert res.overall("after") >= res.overall("before")
    # the tuned document = the defaults with the tuned per-type params; astro untouched
    meta = load_cache(cache)
    doc = tuned_document(meta, res)
    assert doc["postprocess"]["shsy5y"]["score"] == sh.best["score"]
    assert doc["postprocess"]["astro"] == meta["state"]["postprocess"]["astro"]
    with pytest.raises(ValueError, match="holds raw outputs of a 'maskrcnn' model"):
        search(cache, gt, "cellpose")


def test_search_never_lowers_the_map(maskrcnn_cache):
    """A grid with only worse values keeps the model's parameters."""
    cache, gt = maskrcnn_cache
    res = search(cache, gt, n_jobs=1, grids={"score": (0.95,), "nms": (0.01,), "pixel": (0.99,),
                                             "min_area": (500,)}, log=lambda *a: None)
    for r in res.types.values():
        assert r.after == r.before and r.best == r.defaults


def test_cli_search_needs_only_the_cache_and_writes_a_loadable_yaml(maskrcnn_cache, tmp_path):
    from kit.models.maskrcnn import MaskRCNNConfig

    cache, gt = maskrcnn_cache
    out = tmp_path / "tuned.yaml"
    done = run_module("kit.tune", "search", "--cache", cache, "--gt", gt.parent, "--model-type",
                      "maskrcnn", "--out", out, "--n-jobs", "2", "--grid", "score=0.1,0.4,0.6",
                      "--grid", "nms=0.3,0.5", "--grid", "pixel=0.45,0.5", "--grid", "min_area=0,80")
    assert done.returncode == 0, done.stderr
    assert "| shsy5y | 2 | 0.6000 | 1.0000 | +0.4000 |" in done.stdout
    assert "| all | 4 | 0.3000 | 1.0000 | +0.7000 |" in done.stdout
    doc = read_tuned(out)
    assert out.read_text().startswith("# written by python -m kit.tune search")
    assert "| cort | 2 |" in out.with_suffix(".md").read_text()
    model = SimpleNamespace(TYPE="maskrcnn", config=MaskRCNNConfig())
    assert model.config.cell_type == "vote"
    apply_tuned(model, out)
    assert model.config.postprocess.shsy5y.score == doc["postprocess"]["shsy5y"]["score"] >= 0.4
    assert model.config.cell_type == "given"   # tuned per true type: use the given type
    with pytest.raises(ValueError, match="tuned for a 'maskrcnn' model, not 'cellpose'"):
        apply_tuned(model, out, "cellpose")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_type: maskrcnn\npostproces: {}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['postproces'\].*valid keys"):
        read_tuned(bad)
    # errors are clear
    done = run_module("kit.tune", "search", "--cache", tmp_path, "--gt", gt, "--out", out)
    assert done.returncode == 2 and "not a tuning cache" in done.stderr


# ---------------------------------------------------------------------------------------------
# Cellpose


def cellpose_raw(labels: np.ndarray, logit: float = 2.0) -> dict:
    """A perfect cellpose output for ``labels``: 5x the true flows, +-logit cell probability."""
    from cellpose import dynamics

    flows = dynamics.labels_to_flows([labels.copy()], device=torch.device("cpu"))[0]
    return {"dP": (5.0 * flows[2:]).astype(np.float32),
            "cellprob": np.where(labels > 0, logit, -logit).astype(np.float32),
            "style": np.zeros(256, np.float32), "diameter": 10.0, "diameter_source": "config",
            "rescale": 1.0, "niter": 200.0, "shape": tuple(labels.shape)}


def disks(k: int) -> np.ndarray:
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    out = np.zeros(SHAPE, np.int32)
    for n, (r, c) in enumerate([(15, 15 + k), (15, 50), (45, 30), (45, 70 - k)], 1):
        out[(yy - r) ** 2 + (xx - c) ** 2 <= 49] = n
    return out


def test_cellpose_search_on_cached_flows(tmp_path, monkeypatch):
    gts, items = {}, {}
    for k, ct in enumerate(["cort", "astro"]):
        gts[f"c{k}"] = (ct, disks(k))
        items[f"c{k}"] = (ct, cellpose_raw(disks(k)))
    gt = write_train_csv(tmp_path / "train.csv", gts)
    # the model's thresholds: cellprob 3 > every logit, so nothing is found
    state = {"cell_types": {ct: {"diameter": "size_model", "flow_threshold": 0.6,
                                    "cellprob_threshold": 3.0, "min_size": 15, "niter": None}
                               for ct in ("shsy5y", "astro", "cort")},
                "max_size_fraction": 0.4}
    cache = write_cache(tmp_path / "cache", "cellpose", state, items, "arrays")
    back = load_raw("arrays", cache / "s0" / "c0.npz")
    assert back["shape"] == SHAPE and back["diameter_source"] == "config"
    forbid_networks(monkeypatch)
    res = search(cache, gt, "cellpose", n_jobs=1, rounds=1,
                 grids={"cellprob_threshold": (-1.0, 0.0), "flow_threshold": (0.0, 0.4),
                        "min_size": (0, 15)}, log=lambda *a: None)
    for ct in ("cort", "astro"):
        assert res.types[ct].before == 0.0 and res.types[ct].after == 1.0
        assert res.types[ct].best["cellprob_threshold"] < 2.0
    doc = tuned_document(load_cache(cache), res)
    assert doc["cell_types"]["shsy5y"]["cellprob_threshold"] == 3.0   # no shsy5y image: kept
    meta = load_cache(cache)
    labels = render(cache, meta, "c0", "cort", res.types["cort"].best)
    assert labels.max() == 4


def test_cellpose_family_renders_what_the_model_postprocesses():
    import kit.models.cellpose as kcp
    from kit.models.cellpose.network import _new_cellpose_model

    cfg = kcp.CellposeConfig(diam_mean=17.0)
    cp = _new_cellpose_model(cfg.diam_mean, inference=True)
    model = kcp.CellposeSegmenter(cp, cfg, {ct: {"diameter": 17.0} for ct in ("shsy5y", "astro", "cort")},
                                  None)
    raw = cellpose_raw(disks(0), logit=1.0)
    rng = np.random.default_rng(0)
    raw["dP"] = raw["dP"] + rng.normal(0, 1.0, raw["dP"].shape).astype(np.float32)
    for params in ({"cellprob_threshold": 0.0, "flow_threshold": 0.4, "min_size": 15},
                   {"cellprob_threshold": -0.5, "flow_threshold": 0.0, "min_size": 0}):
        fam = family("cellpose")
        np.testing.assert_array_equal(
            fam.postprocess_raw(raw, "cort", params, fam.tuning_state(model)),
            model.postprocess_raw(raw, params))
    tuned = {"model_type": "cellpose", "cell_types": {"astro": {"cellprob_threshold": -2.0}}}
    apply_tuned(model, tuned)
    assert model.config.cell_types["astro"].cellprob_threshold == -2.0
    assert model.config.cell_types["astro"].flow_threshold == 0.6        # the rest is kept
    with pytest.raises(ValueError, match="cell_types.astro.*min_sise"):
        apply_tuned(model, {"model_type": "cellpose", "cell_types": {"astro": {"min_sise": 3}}})


# ---------------------------------------------------------------------------------------------
# a real cache: an ensemble of a tiny random Mask R-CNN and the baseline, with TTA


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, synth_dir):
    from kit.data import make_folds, read_competition_dir, write_folds_csv
    from kit.models.baseline import BaselineModel
    from tests.conftest import tiny_maskrcnn

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tiny_maskrcnn(d / "mrcnn")
    BaselineModel().save(d / "base")
    records = read_competition_dir(synth_dir).train
    folds = write_folds_csv(make_folds(records, 3, 0), d / "folds.csv")
    return d, folds


def test_cache_of_an_ensemble_then_search_without_the_models(tiny_models, synth_dir, tmp_path,
                                                             monkeypatch):
    from kit.models import load_model
    from kit.models.ensemble import make_ensemble

    d, folds = tiny_models
    work = tmp_path / "models"
    shutil.copytree(d, work)
    ens = make_ensemble(work / "ens", [(work / "mrcnn", 1.0), (work / "base", 1.0)], ("id", "hflip"))
    cache = tmp_path / "cache"
    done = run_module("kit.tune", "cache", "--model", ens, "--data", synth_dir, "--fold", "0",
                      "--folds", folds, "--max-images", "1", "--out", cache, "--quiet")
    assert done.returncode == 0, done.stderr
    meta = load_cache(cache)
    assert [s["format"] for s in meta["sources"]] == ["detections", "labels"] * 2
    assert len(meta["images"]) == 1 and len(list((cache / "s0").glob("*.npz"))) == 1
    # the cache renders what the ensemble predicts (the "before" is the model's own output), up
    # to the float16 the cache stores mask probabilities in (Detections.save)
    from kit.data import read_competition_dir
    from kit.tune import default_params

    detector = type(family("maskrcnn"))
    raw = detector.predict_raw

    def float16_masks(*a, **k):
        d = raw(*a, **k)
        d.masks = d.masks.astype(np.float16).astype(np.float32)
        return d

    monkeypatch.setattr(detector, "predict_raw", float16_masks)
    rec = {r.id: r for r in read_competition_dir(synth_dir).train}[meta["images"][0]["id"]]
    model = load_model(ens)
    np.testing.assert_array_equal(
        render(cache, meta, rec.id, rec.cell_type, default_params(meta, rec.cell_type)),
        model.predict(rec.load_image(), rec.cell_type))
    # no model folder any more: the search works from the cache alone
    shutil.rmtree(work)
    out = tmp_path / "tuned.yaml"
    done = run_module("kit.tune", "search", "--cache", cache, "--gt", synth_dir, "--out", out,
                      "--n-jobs", "1", "--rounds", "1", "--params", "score", "wbf_iou",
                      "min_support", "w0", "--grid", "score=0.1,0.3", "--grid", "wbf_iou=0.5",
                      "--grid", "min_support=1.0", "--grid", "weight=0,2")
    assert done.returncode == 0, done.stderr
    doc = read_tuned(out)
    assert doc["model_type"] == "ensemble"
    tuned_types = {i["cell_type"] for i in meta["images"]}
    for ct in tuned_types:
        assert len(doc[ct]["weights"]) == 2


def test_tuned_yaml_in_a_model_folder_is_applied_by_load_model(tiny_models, tmp_path):
    from kit.models.ensemble import make_ensemble
    from kit.models import load_model

    d, _ = tiny_models
    ens = make_ensemble(tmp_path / "ens", [(d / "base", 1.0), (d / "base", 1.0)], ("id",))
    (ens / "tuned.yaml").write_text("model_type: ensemble\ncort:\n  weights: [2.0, 0.0]\n"
                                    "  min_support: 1.0\n")
    model = load_model(ens)
    assert model.config.cort.weights == (2.0, 0.0) and model.config.cort.min_support == 1.0
    assert model.config.shsy5y.min_support == 0.5
    assert load_model(ens, tuned=False).config.cort.weights == ()
    (ens / "tuned.yaml").write_text("model_type: ensemble\ncort:\n  weights: [1.0]\n")
    with pytest.raises(ValueError, match="cort.weights has 1 values for 2 members"):
        load_model(ens)


def test_predict_applies_a_tuned_yaml(tiny_models, synth_dir, tmp_path):
    import dataclasses

    from kit.data import read_competition_dir
    from kit.models.ensemble import make_ensemble
    from kit.models.baseline import DEFAULT_PARAMS, BaselineModel
    from kit.predict import run
    from kit.submission import read_predictions

    d, _ = tiny_models
    blind = BaselineModel({ct: dataclasses.replace(p, min_area=10**6, max_area=10**6)
                           for ct, p in DEFAULT_PARAMS.items()}).save(tmp_path / "blind")
    ens = make_ensemble(tmp_path / "ens", [(d / "base", 1.0), (blind, 1.0)], ("id",))
    test = read_competition_dir(synth_dir).test
    types = tmp_path / "types.csv"
    types.write_text("id,cell_type\n" + "".join(f"{r.id},{r.cell_type}\n" for r in test))
    # default min_support 0.5: the baseline's cells (half the weight) are kept; 1.0: none are
    tuned = tmp_path / "t.yaml"
    tuned.write_text("model_type: ensemble\n" + "".join(f"{ct}:\n  min_support: 1.0\n"
                                                         for ct in ("shsy5y", "astro", "cort")))
    run(ens, synth_dir / "test", tmp_path / "a.csv", cell_types_csv=types, progress=False)
    run(ens, synth_dir / "test", tmp_path / "b.csv", cell_types_csv=types, progress=False, tuned=tuned)
    a, b = read_predictions(tmp_path / "a.csv"), read_predictions(tmp_path / "b.csv")
    assert sum(map(len, a.values())) > 0 and sum(map(len, b.values())) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_type: cellpose\ncell_types: {}\n")
    with pytest.raises(ValueError, match="tuned for a 'cellpose' model, not 'ensemble'"):
        run(ens, synth_dir / "test", tmp_path / "c.csv", cell_types_csv=types, progress=False,
            tuned=bad)
