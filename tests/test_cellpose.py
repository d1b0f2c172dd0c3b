"""kit.models.cellpose: training on tiny synthetic images, resume, size model, inference, errors.

Everything runs on one CPU thread with 64-px crops; the whole module takes about a minute.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cellpose")

from kit import rle  # noqa: E402
from kit.config import ConfigError  # noqa: E402
from kit.data import ImageRecord  # noqa: E402
from kit.models import cellpose as kcp  # noqa: E402
from kit.models.cellpose import CellposeConfig, learning_rates, training_labels  # noqa: E402
from kit.models.cellpose import data as kcp_data  # noqa: E402
from kit.models.cellpose import network as kcp_network  # noqa: E402
from kit.models.cellpose import steps as kcp_steps  # noqa: E402
from kit.models.cellpose import train as kcp_train  # noqa: E402
from kit.models.family import FitOptions  # noqa: E402
from tests.conftest import copy_listing_a_specialist, run_module  # noqa: E402


def fit(records, out, config, *, log=None, progress=False, resume=False, pretrained=None,
        pretrain_records=()):
    """kit.models.cellpose.fit without validation images, options spelled as keywords."""
    return kcp.fit(records, [], out, FitOptions(config=config, resume=resume, pretrained=pretrained,
                                                livecell=tuple(pretrain_records),
                                                progress=progress), log)

SMOKE = kcp.DEFAULT_CONFIG.parent / "cellpose_smoke.yaml"
# 2 images, 12 epochs of 8 crops of 64 px: enough for the loss to fall clearly (fixed seeds)
TINY = {"diam_mean": 17.0,
        "train": {"epochs": 12, "batch_size": 8, "bsize": 64, "warmup_epochs": 0,
                  "nimg_per_epoch": 8, "save_every": 3, "lr": 0.005},
        "size_model": {"epochs": 1, "batch_size": 8, "bsize": 64, "augment": False},
        "inference": {"augment": False}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**train) -> CellposeConfig:
    doc = json.loads(json.dumps(TINY))
    doc["train"].update(train)
    return CellposeConfig.from_dict(doc)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Two 128x160 synthetic images (shsy5y, cort) with 20 cells each, as PNG-backed records."""
    from kit.synth import make_image

    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    out = []
    for i, ct in enumerate(["shsy5y", "cort"]):
        s = make_image(ct, rng, (128, 160), n_cells=20)
        cv2.imwrite(str(d / f"img{i}.png"), s.image)
        out.append(ImageRecord(id=f"img{i}", image_path=d / f"img{i}.png", shape=(128, 160),
                               cell_type=ct, sample_id=str(i), rles=tuple(s.annotations)))
    return out


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    """An uninterrupted 12-epoch run with a size model: (model, folder, events)."""
    out = tmp_path_factory.mktemp("cp") / "model"
    events = []
    model = fit(records, out, tiny_config(), log=lambda e, **f: events.append((e, f)), progress=False)
    return model, out, events


def epoch_rows(folder):
    with open(folder / kcp.EPOCH_LOG, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ pure functions


def test_training_labels_paint_small_masks_last():
    shape = (20, 20)
    big = np.zeros(shape, bool)
    big[2:14, 2:14] = True
    small = np.zeros(shape, bool)
    small[10:16, 10:16] = True
    hidden = np.zeros(shape, bool)
    hidden[3:5, 3:5] = True  # inside `big` and covered by `cover`
    cover = np.zeros(shape, bool)
    cover[3:6, 3:6] = True
    rles = [rle.encode(m) for m in (small, big, cover, hidden)]
    labels = training_labels(rles, shape)
    assert labels.dtype == np.int32
    # the small mask keeps all its pixels although it comes first in the list
    assert len(np.unique(labels[small])) == 1 and labels[small][0] > 0
    assert (labels[big & ~small & ~cover] == labels[5, 8]).all()
    # `hidden` (area 4) is painted after `cover` (area 9): the smallest wins
    assert (labels[hidden] == labels[hidden][0]).all() and labels[3, 5] != labels[3, 3]
    # equal areas keep list order: the later mask wins (kit.rle.decode_labels' rule)
    a = np.zeros(shape, bool)
    a[0:4, 0:4] = True
    b = np.zeros(shape, bool)
    b[2:6, 2:6] = True
    lab = training_labels([rle.encode(a), rle.encode(b)], shape)
    assert lab[3, 3] == lab[5, 5] != lab[0, 0]
    assert not training_labels([], shape).any()


def test_learning_rates_follow_cellpose_schedule():
    r = learning_rates(500, 0.005, 10)
    assert np.allclose(r[:10], 0.005 * np.arange(1, 11) / 10)
    assert np.allclose(r[10:400], 0.005)
    assert np.isclose(r[400], 0.0025) and np.isclose(r[-1], 0.005 / 2 ** 10)
    r = learning_rates(150, 0.1, 0)
    assert np.allclose(r[:100], 0.1) and np.isclose(r[100], 0.05) and np.isclose(r[-1], 0.1 / 2 ** 10)
    assert np.allclose(learning_rates(4, 1.0, 10), [0.25, 0.5, 0.75, 1.0])  # warm-up fits the run


def test_seg_loss_equals_cellposes():
    train = pytest.importorskip("cellpose.train")
    if not hasattr(train, "_loss_fn_seg"):
        pytest.skip("cellpose has no _loss_fn_seg")
    rng = np.random.default_rng(1)
    lbl = rng.random((2, 3, 16, 16)).astype(np.float32)
    y = torch.from_numpy(rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    ours = kcp.seg_loss(lbl, y)
    theirs = train._loss_fn_seg(lbl, y, torch.device("cpu"))
    assert torch.allclose(ours, theirs)


def test_net_input_is_cellposes_preprocessing():
    from cellpose import transforms

    img = (np.random.default_rng(2).random((40, 50)) * 200 + 20).astype(np.uint8)
    x = kcp.net_input(img)
    assert x.shape == (2, 40, 50) and x.dtype == np.float32
    assert np.allclose(x[0], transforms.normalize99(img.astype(np.float32))) and not x[1].any()


def test_config_files_and_errors(tmp_path):
    for name in ("cellpose.yaml", "cellpose_cpu.yaml", "cellpose_smoke.yaml"):
        kcp.load_config(kcp.DEFAULT_CONFIG.parent / name)
    cfg = kcp.load_config()
    assert cfg.cell_types["shsy5y"].flow_threshold == 0.6  # the seed's
    assert cfg.cell_types["cort"].cellprob_threshold == -1.0
    assert cfg.inference.augment and cfg.inference.resample
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  n_epoch: 3\n")
    with pytest.raises(ConfigError) as e:
        kcp.load_config(bad)
    msg = str(e.value)
    assert str(bad) in msg and "train: unknown key(s) ['n_epoch']" in msg and "'epochs'" in msg
    bad.write_text("cell_types:\n  shsy5y: {}\n  astro: {}\n  cort: {}\n  hela: {}\n")
    with pytest.raises(ConfigError, match=r"unknown cell type\(s\) \['hela'\]"):
        kcp.load_config(bad)
    bad.write_text("cell_types:\n  cort: {diameter: huge}\n")
    with pytest.raises(ConfigError, match="cell_types.cort.diameter"):
        kcp.load_config(bad)


# ------------------------------------------------------------------------------ training


def test_training_records_loss_and_writes_folder(trained):
    model, out, events = trained
    rows = epoch_rows(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    loss = np.array([float(r["train_loss"]) for r in rows])
    assert np.isfinite(loss).all()
    # 8 crops an epoch: the ratio ranges 0.82-0.88 over seeds 0-3 (0.67-0.94 when an
    # epoch's crops come from one random stream)
    assert loss[-4:].mean() < 0.9 * loss[:4].mean(), loss
    for name in ("model.json", kcp.WEIGHTS, kcp.SIZE_MODEL, kcp.CONFIG_COPY, kcp.CHECKPOINT):
        assert (out / name).is_file(), name
    doc = json.loads((out / "model.json").read_text())
    assert doc["type"] == "cellpose" and doc["training"]["complete"] and doc["training"]["epochs_done"] == 12
    assert set(doc["diameters"]) == {"shsy5y", "astro", "cort"}
    assert doc["diameters"]["astro"]["n_images"] == 0  # no astro image: falls back to all images
    assert doc["versions"]["cellpose"].startswith("3.")
    assert CellposeConfig.from_dict(doc["config"]) == tiny_config()
    assert [e for e, _ in events] == ["cellpose_data", "cellpose_precision", "cellpose_train",
                                      "cellpose_batchnorm", "cellpose_size_model"]
    assert dict(events)["cellpose_precision"]["autocast"] is None  # amp_cpu: false


def test_bfloat16_autocast_on_cpu_trains_on_the_same_crops(trained, records, tmp_path):
    """train.amp_cpu: the same crops and schedule as the float32 run, other (bfloat16) numbers,
    and the loss falls alike. A CPU without native bfloat16 emulates it (a warning; a step
    ~40x slower): there the first 3 of the 12 epochs only, the same schedule."""
    import contextlib

    from kit.models.precision import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    out = tmp_path / "model"
    events = []
    with (contextlib.nullcontext() if native
          else pytest.warns(RuntimeWarning, match="without native bfloat16")):
        kcp.fit(records, [], out, FitOptions(config=tiny_config(amp_cpu=True), progress=False,
                                             stop_after_epochs=None if native else 3),
                lambda e, **f: events.append((e, f)))
    assert dict(events)["cellpose_precision"]["autocast"] == "bfloat16"
    ref = np.array([float(r["train_loss"]) for r in epoch_rows(trained[1])])
    loss = np.array([float(r["train_loss"]) for r in epoch_rows(out)])
    assert len(ref) == 12 and len(loss) == (12 if native else 3) and np.isfinite(loss).all()
    assert loss[0] != ref[0] and abs(loss[0] / ref[0] - 1) < 0.05, (loss[0], ref[0])
    if native:
        assert loss[-4:].mean() < 0.9 * loss[:4].mean(), loss
    doc = json.loads((out / "model.json").read_text())
    assert doc["config"]["train"]["amp_cpu"] is True


def test_targets_are_cached_on_disk_and_read_per_batch(records, tmp_path):
    """Flows are computed once per image into the cache; a second run reads them (the same
    arrays), other masks get other files, an incomplete file set is made again."""
    cache = tmp_path / "cache"
    cpu = torch.device("cpu")
    first = kcp_data._prepare(records, 5, cpu, "test", False, cache=cache)
    assert first.built == 2 and len(first) == 2
    again = kcp_data._prepare(records, 5, cpu, "test", False, cache=cache)
    assert again.built == 0 and again.files == first.files and again.diam == first.diam
    xs, ys = again.batch([1, 0])
    assert xs[0].shape == (2, 128, 160) and xs[0].dtype == np.float32 and ys[0].shape == (3, 128, 160)
    np.testing.assert_array_equal(ys[1], first.flows(0).astype(np.float32))
    # read ahead by a background thread: the same batches, in order
    ahead = list(again.batches([[1, 0], [0], [1]]))
    assert [list(inds) for inds, _ in ahead] == [[1, 0], [0], [1]]
    np.testing.assert_array_equal(ahead[0][1][1][1], ys[1])
    np.testing.assert_array_equal(ahead[2][1][0][0], xs[0])
    labels = again.labels(0)
    assert labels.dtype == np.int32 and labels.max() == len(np.unique(labels)) - 1
    # fewer masks: another key, another file set; the first image's set is untouched
    fewer = [dataclasses.replace(records[0], rles=records[0].rles[:-1])]
    other = kcp_data._prepare(fewer, 5, cpu, "test", False, cache=cache)
    assert other.built == 1 and other.files[0] != first.files[0]
    # a file set without its json (a killed run) is made again
    Path(first.files[1] + ".json").unlink()
    redone = kcp_data._prepare(records, 5, cpu, "test", False, cache=cache)
    assert redone.built == 1
    np.testing.assert_array_equal(redone.flows(1), first.flows(1))
    # an image with too few masks is skipped, its json says why
    few = kcp_data._prepare(records, 10_000, cpu, "test", False, cache=cache)
    assert len(few) == 0 and few.skipped == ["img0", "img1"] and few.built == 0


def test_batchnorm_recalibration_restores_eval_mode(trained, records):
    """12 steps leave the running BatchNorm statistics far from the weights' own: eval-mode
    outputs are off until the statistics are recomputed."""
    import copy

    _, out, _ = trained
    cfg = tiny_config()
    data = kcp_data._prepare(records, 5, torch.device("cpu"), "test", False)
    net = kcp_network._new_cellpose_model(17.0, inference=False).net
    net.load_state_dict(torch.load(out / kcp.CHECKPOINT, weights_only=False)["net"])  # not recalibrated
    np.random.seed(0)
    imgi, lbl = kcp_steps._crops(data, [0, 1, 0, 1], 17.0, cfg.train)
    x = torch.from_numpy(imgi)

    def loss(model, train):
        model.train(train)
        with torch.no_grad():
            return float(kcp.seg_loss(lbl, model(x)[0]))

    reference = loss(copy.deepcopy(net), True)  # batch statistics (a copy: this updates them)
    stale = loss(net, False)
    assert kcp.recalibrate_batchnorm(net, data, 17.0, cfg.train) == 16
    fresh = loss(net, False)
    assert abs(fresh - reference) < 0.5 * abs(stale - reference), (reference, stale, fresh)
    saved = torch.load(out / kcp.WEIGHTS, weights_only=True)
    assert torch.equal(saved["output.0.running_mean"], net.state_dict()["output.0.running_mean"])


def test_resume_after_interruption_continues_from_checkpoint(records, trained, tmp_path, monkeypatch):
    """Crash during epoch 5 (checkpoint of epoch 3 on disk), resume: epochs 4-12 run again and
    the weights equal those of the uninterrupted run."""
    _, ref_dir, _ = trained
    out = tmp_path / "model"
    real_epoch = kcp_train._train_epoch
    calls = []

    class Crash(RuntimeError):
        pass

    def crashing_epoch(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise Crash("killed")
        return real_epoch(*a, **kw)

    monkeypatch.setattr(kcp_train, "_train_epoch", crashing_epoch)
    with pytest.raises(Crash):
        fit(records, out, tiny_config(), progress=False)
    monkeypatch.setattr(kcp_train, "_train_epoch", real_epoch)
    assert torch.load(out / kcp.CHECKPOINT, weights_only=False)["epoch"] == 3
    assert len(epoch_rows(out)) == 4  # epoch 4 finished but was not checkpointed
    with pytest.raises(ValueError, match="pass --resume"):
        fit(records, out, tiny_config(), progress=False)
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        fit(records, out, tiny_config(lr=0.01), resume=True, progress=False)
    events = []
    fit(records, out, tiny_config(), resume=True, log=lambda e, **f: events.append((e, f)),
        progress=False)
    assert ("cellpose_resume", {"from_epoch": 3, "of": 12}) in events
    rows, ref_rows = epoch_rows(out), epoch_rows(ref_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref_rows]
    ours = torch.load(out / kcp.WEIGHTS, weights_only=True)
    ref = torch.load(ref_dir / kcp.WEIGHTS, weights_only=True)
    assert all(torch.allclose(ours[k], ref[k], atol=1e-6) for k in ref)


def test_pretrained_weights_and_stages(records, trained, tmp_path, monkeypatch):
    import cellpose.models
    import cellpose.utils

    def no_download(*a, **kw):
        raise AssertionError("cellpose tried to download")

    monkeypatch.setattr(cellpose.utils, "download_url_to_file", no_download)
    monkeypatch.setattr(cellpose.models, "cache_model_path", no_download)
    missing = tmp_path / "cyto3"
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found: .*cyto3"):
        fit(records, tmp_path / "a", tiny_config(), pretrained=missing, progress=False)
    _, ref_dir, _ = trained
    cfg30 = dataclasses.replace(tiny_config(), diam_mean=30.0)
    with pytest.raises(ValueError, match="set diam_mean: 17"):
        fit(records, tmp_path / "b", cfg30, pretrained=ref_dir, progress=False)
    not_weights = tmp_path / "junk.pt"
    not_weights.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a torch weights file"):
        fit(records, tmp_path / "c", tiny_config(), pretrained=not_weights, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        fit(records, tmp_path / "d", tiny_config(), resume=True, progress=False)
    # a model folder as starting point, and a pretraining stage on extra images (LIVECell's role)
    extra = [dataclasses.replace(r, id="lc_" + r.id, cell_type=None) for r in records]
    cfg = tiny_config(epochs=1, livecell_epochs=1)
    m = fit(records, tmp_path / "e", dataclasses.replace(cfg, size_model=dataclasses.replace(
        cfg.size_model, enabled=False)), pretrained=ref_dir, pretrain_records=extra, progress=False)
    assert [r["stage"] for r in epoch_rows(tmp_path / "e")] == ["pretrain", "train"]
    doc = json.loads((tmp_path / "e" / "model.json").read_text())
    assert doc["training"]["pretrained"].endswith(kcp.WEIGHTS) and doc["size_model"] is None
    assert m.size_params is None
    with pytest.raises(ValueError, match="livecell_epochs is 1 but no pretraining images"):
        fit(records, tmp_path / "f", cfg, progress=False)


def test_kit_train_livecell_options(records, tmp_path):
    """kit.train's options read a COCO (LIVECell) json for the cellpose pretraining stage."""
    import argparse

    from kit.models.registry import family
    from kit.runlog import RunLog
    from kit.train import check_inputs, fit_options

    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    for k, r in enumerate(records):
        coco["images"].append({"id": k, "file_name": r.image_path.name, "height": 128, "width": 160})
        for mask in r.stack():
            seg = rle.mask_to_coco(mask)
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": k,
                                        "category_id": 1, "segmentation": seg})
    (tmp_path / "lc.json").write_text(json.dumps(coco))
    cfg = tmp_path / "pre.yaml"
    cfg.write_text(SMOKE.read_text().replace("  epochs:   3\n", "  epochs: 1\n  livecell_epochs: 1\n"))
    args = argparse.Namespace(model="cellpose", config=cfg, epochs=None, livecell=tmp_path / "lc.json",
                              livecell_images=None, time_budget=None, pretrained=None, folds=None,
                              resume=False, fresh=False, quiet=True, out=tmp_path / "m")
    with pytest.raises(ValueError, match="--livecell needs --livecell-images"):
        check_inputs(args)
    args.livecell_images = records[0].image_path.parent
    check_inputs(args)
    (tmp_path / "m").mkdir()
    family("cellpose").fit(records, [], tmp_path / "m", fit_options(args),
                           RunLog(tmp_path / "m" / "train.log"))
    assert [r["stage"] for r in epoch_rows(tmp_path / "m")] == ["pretrain", "train"]
    events = [json.loads(x) for x in (tmp_path / "m" / "train.log").read_text().splitlines()]
    assert events[0]["event"] == "cellpose_data" and events[0]["n_pretrain"] == 2


# ------------------------------------------------------------------------------ inference


def test_predict_raw_postprocess_and_cellpose_agree(trained, records):
    model, _, _ = trained
    img = records[0].load_image()
    labels = model.predict(img, "shsy5y")
    assert labels.dtype == np.int32 and labels.shape == img.shape and labels.min() >= 0
    raw = model.predict_raw(img, "shsy5y")
    assert raw["dP"].shape == (2, 128, 160) and raw["cellprob"].shape == (128, 160)
    assert raw["style"].shape == (256,) and raw["diameter"] > 0
    assert np.array_equal(model.postprocess_raw(raw, "shsy5y"), labels)
    # permissive thresholds give masks; they equal cellpose's own eval at the same settings
    params = {"flow_threshold": 0.0, "cellprob_threshold": -2.0, "min_size": 5}
    ours = model.postprocess_raw(raw, params)
    assert ours.max() > 0
    theirs = model.cp.eval(img, channels=[0, 0], diameter=raw["diameter"], augment=False,
                           resample=True, bsize=64, flow_threshold=0.0, cellprob_threshold=-2.0,
                           min_size=5)[0]
    assert np.array_equal(ours, theirs.astype(np.int32))
    ids = np.unique(ours)
    assert np.array_equal(ids, np.arange(len(ids)))  # 0..N, sequential
    with pytest.raises(ValueError, match="unknown cell_type 'hela'"):
        model.predict(img, "hela")
    with pytest.raises(ConfigError, match="unknown key"):
        model.postprocess_raw(raw, {"flow_thresh": 0.1})


def test_a_narrower_cpnet_trains_saves_and_loads(records, tmp_path):
    """width 16: CPnet [2, 16, 32, 64, 256] in training, in the saved weights and in the folder
    loaded again (its style still cellpose's 256 long); weights of another width are refused
    with the width to set."""
    from kit.models.cellpose.model import CellposeSegmenter

    cfg = dataclasses.replace(tiny_config(epochs=2), width=16)
    model = fit(records, tmp_path / "w16", cfg, progress=False)
    state = torch.load(tmp_path / "w16" / kcp.WEIGHTS, weights_only=True)
    assert [state[f"downsample.down.res_down_{k}.conv.conv_0.2.weight"].shape[0]
            for k in range(4)] == [16, 32, 64, 256]
    for width in (16, 32):  # fresh networks: cellpose's inference converts a net in place
        net = kcp_network._new_cellpose_model(17.0, inference=False, width=width).net
        assert sum(p.numel() for p in net.parameters()) == kcp_network.cpnet_params(width)
    assert kcp_network.cpnet_params(16) < kcp_network.cpnet_params(32)
    loaded = CellposeSegmenter.load(tmp_path / "w16")
    assert loaded.config.width == 16
    assert loaded.predict_raw(records[0].load_image(), "cort")["style"].shape == (256,)
    img = records[1].load_image()
    assert np.array_equal(loaded.predict(img, "cort"), model.predict(img, "cort"))
    with pytest.raises(ValueError, match="width 32 .*has width 16, set width: 16"):
        fit(records, tmp_path / "w32", tiny_config(), pretrained=tmp_path / "w16", progress=False)
    with pytest.raises(ConfigError, match="width"):
        CellposeConfig.from_dict({**TINY, "width": 3})


def test_size_model_styles_are_the_networks_own(trained):
    """The SizeModel's style vectors come from the downsample path alone: the very values of the
    full forward pass's second output."""
    model, _, _ = trained
    net = model.cp.net
    net.eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 2, 64, 96), np.float32))
    with torch.no_grad():
        full = net(x)[1]
        alone = kcp_train.styles_of(net, x)
    assert alone.shape == (3, 256)
    torch.testing.assert_close(alone, full, rtol=0, atol=0)


def test_size_model_is_trained_and_used(trained, records):
    model, out, _ = trained
    img = records[1].load_image()
    assert model.size_params is not None and set(model.size_params) >= {"A", "smean", "ymean"}
    d = model.size_model_diameter(img)
    assert np.isfinite(d) and d >= 5
    cfg = model.config
    try:
        model.config = dataclasses.replace(cfg, size_model=dataclasses.replace(cfg.size_model,
                                                                               max_ratio=1e6))
        assert model.estimate_diameter(img, "cort") == (d, "size_model")
        model.config = dataclasses.replace(cfg, size_model=dataclasses.replace(cfg.size_model,
                                                                               max_ratio=1.0))
        got, source = model.estimate_diameter(img, "cort")
        assert got == model.diameters["cort"] and source.startswith("median")
        types = dict(cfg.cell_types)
        types["cort"] = dataclasses.replace(types["cort"], diameter=21.0)
        model.config = dataclasses.replace(cfg, cell_types=types)
        assert model.estimate_diameter(img, "cort") == (21.0, "config")
    finally:
        model.config = cfg
    bare = kcp.CellposeSegmenter(model.cp, cfg, json.loads((out / "model.json").read_text())["diameters"], None)
    assert bare.estimate_diameter(img, "cort") == (model.diameters["cort"], "median")


# ------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def small_comp(tmp_path_factory):
    from kit.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("comp") / "data", n_train=9, n_test=2, seed=4,
                        shape=(128, 160))


def test_cli_train_budget_resume_predict_submission(small_comp, tmp_path):
    out = tmp_path / "cp"
    common = ["kit.train", "cellpose", "--data", small_comp, "--n-folds", 3, "--fold", 0,
              "--out", out, "--config", SMOKE, "--quiet"]
    done = run_module(*common, "--time-budget", 0)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "model.json").read_text())
    assert doc["training"]["epochs_done"] == 1 and doc["training"]["stopped"] == "time budget"
    assert (out / "oof.csv").is_file() and "MAP" in done.stdout
    done = run_module(*common, "--resume")
    assert done.returncode == 0, done.stderr
    assert [int(r["epoch"]) for r in epoch_rows(out)] == [1, 2, 3]
    doc = json.loads((out / "model.json").read_text())
    assert doc["training"]["complete"] and doc["training"]["epochs_done"] == 3
    events = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert {"event": "cellpose_resume", "from_epoch": 1, "of": 3}.items() <= \
        next(e for e in events if e["event"] == "cellpose_resume").items()
    sub = tmp_path / "submission.csv"
    done = run_module("kit.predict", "--model", out, "--images", small_comp / "test", "--ids",
                      small_comp / "sample_submission.csv", "--out", sub, "--quiet")
    assert done.returncode == 0, done.stderr
    check = run_module("kit.submission", sub, "--data", small_comp)
    assert check.returncode == 0, check.stdout + check.stderr


def test_cli_errors_are_clear(small_comp, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("size_model:\n  n_epochs: 3\n")
    done = run_module("kit.train", "cellpose", "--data", small_comp, "--n-folds", 3,
                      "--out", tmp_path / "o1", "--config", bad, "--quiet")
    assert done.returncode == 2
    assert "size_model: unknown key(s) ['n_epochs']; valid keys are ['enabled', 'epochs'" in done.stderr
    done = run_module("kit.train", "cellpose", "--data", small_comp, "--n-folds", 3,
                      "--out", tmp_path / "o2", "--config", SMOKE, "--pretrained",
                      tmp_path / "livecell_cp3", "--quiet")
    assert done.returncode == 2 and "--pretrained" in done.stderr and "no such file" in done.stderr
    assert "Downloading" not in done.stderr


def test_model_folders_with_the_older_key_names_still_load():
    """Saved model.json configs from before the shared vocabulary (n_epochs, learning_rate,
    pretrain_epochs, val_every) are renamed on load; a config FILE with them is an error."""
    from kit.models.cellpose import renamed_keys

    new = CellposeConfig().to_dict()
    old = dict(new)
    old["train"] = {{"epochs": "n_epochs", "lr": "learning_rate", "livecell_epochs": "pretrain_epochs",
                     "eval_every": "val_every"}.get(k, k): v for k, v in new["train"].items()}
    old["size_model"] = {("n_epochs" if k == "epochs" else k): v for k, v in new["size_model"].items()}
    assert CellposeConfig.from_dict(renamed_keys(old)) == CellposeConfig()
    with pytest.raises(ConfigError, match="unknown key"):
        CellposeConfig.from_dict(old)


# ------------------------------------------------------------------------------ specialists

def _specialist_run(trained, records, tmp_path, val=(), **train):
    """The trained folder copied and resumed with ``train.specialize`` set: the all-type stage is
    complete, so only the specialists train. Returns (folder, events)."""
    import shutil

    _, ref_dir, _ = trained
    out = tmp_path / "model"
    shutil.copytree(ref_dir, out)
    events = []
    kcp.fit(records, list(val), out, FitOptions(config=tiny_config(**train), resume=True,
                                                progress=False),
            lambda e, **f: events.append((e, f)))
    return out, events


def test_a_specialist_fine_tunes_one_cell_type_and_serves_its_images(trained, records, tmp_path):
    """train.specialize: the final all-type network fine-tuned on one type's images alone (no
    validation images: kept); model.json lists it, images of that type and only those get
    their flows from it; a rerun trains it again (epochs.csv holds its rows once) and a run
    without specialize deletes its file."""
    from kit.models.cellpose.config import specialist_weights
    from kit.models.cellpose.model import CellposeSegmenter

    out, events = _specialist_run(trained, records, tmp_path, specialize={"cort": 3},
                                  specialize_lr=0.002)
    (event,) = [f for e, f in events if e == "specialist"]
    assert event["kept"] and event["cell_type"] == "cort" and event["epochs"] == 3
    assert event["images"] == 1 and event["val_images"] == 0 and event["val_map"] is None
    rows = [r for r in epoch_rows(out) if r["stage"] == "specialist:cort"]
    assert [int(r["stage_epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["lr"]) <= 0.002 for r in rows) and float(rows[1]["lr"]) == 0.002
    doc = json.loads((out / "model.json").read_text())
    assert doc["specialists"]["cort"]["weights"] == specialist_weights("cort") == "cellpose_net_cort"
    general = torch.load(out / kcp.WEIGHTS, weights_only=True)
    special = torch.load(out / specialist_weights("cort"), weights_only=True)
    assert general.keys() == special.keys()
    assert any(not torch.equal(general[k], special[k]) for k in general)

    loaded = kcp.CellposeSegmenter.load(out)
    assert set(loaded.specialists) == {"cort"}
    image = records[1].load_image()
    # the diameter (here the size model's) is the all-type network's, for every type
    all_type = CellposeSegmenter(loaded.cp, loaded.config, doc["diameters"], loaded.size_params)
    assert loaded.predict_raw(image, "cort")["diameter"] == all_type.predict_raw(image, "cort")["diameter"]
    # the flows of a type with a specialist are the specialist's, the others the all-type's
    median = dataclasses.replace(loaded.config, cell_types={
        ct: dataclasses.replace(c, diameter="median") for ct, c in loaded.config.cell_types.items()})
    model = CellposeSegmenter(loaded.cp, median, doc["diameters"], None, specialists=loaded.specialists)
    alone = {which: CellposeSegmenter(cp, median, doc["diameters"], None)
             for which, cp in (("all", loaded.cp), ("cort", loaded.specialists["cort"]))}
    for cell_type, which in (("cort", "cort"), ("shsy5y", "all"), ("astro", "all")):
        got, want = model.predict_raw(image, cell_type), alone[which].predict_raw(image, cell_type)
        assert np.array_equal(got["dP"], want["dP"]) and np.array_equal(got["cellprob"], want["cellprob"])
    assert not np.array_equal(model.predict_raw(image, "cort")["dP"],
                              alone["all"].predict_raw(image, "cort")["dP"])

    _specialist_run(trained, records, tmp_path / "again", specialize={"cort": 2})
    assert len([r for r in epoch_rows(tmp_path / "again" / "model")
                if r["stage"] == "specialist:cort"]) == 2
    fit(records, out, tiny_config(), resume=True)  # the same run without specialize
    assert not (out / specialist_weights("cort")).exists()
    assert "specialists" not in json.loads((out / "model.json").read_text())
    assert not kcp.CellposeSegmenter.load(out).specialists


def test_a_specialist_is_kept_only_if_it_beats_the_all_type_network_on_its_validation_images(
        trained, records, tmp_path):
    """With validation images of the type, both networks segment them (the type given, the
    config's settings); the specialist is kept exactly when its MAP there is higher, and the
    recorded scores are those of the saved networks."""
    from kit.synth import make_image
    from kit.models.cellpose.config import specialist_weights
    from kit.models.validation import evaluate

    rng = np.random.default_rng(7)
    s = make_image("cort", rng, (128, 160), n_cells=20)
    cv2.imwrite(str(tmp_path / "val.png"), s.image)
    val = ImageRecord(id="val", image_path=tmp_path / "val.png", shape=(128, 160),
                      cell_type="cort", sample_id="v", rles=tuple(s.annotations))
    out, events = _specialist_run(trained, records, tmp_path, val=[val], specialize={"cort": 3})
    (event,) = [f for e, f in events if e == "specialist"]
    assert event["val_images"] == 1
    assert event["kept"] == (event["val_map"] > event["all_type_val_map"])
    model = kcp.CellposeSegmenter.load(out)
    assert ("cort" in model.specialists) == event["kept"] == (out / specialist_weights("cort")).exists()
    assert not list(out.glob("*.tmp"))
    general = kcp.CellposeSegmenter(model.cp, model.config,
                                    json.loads((out / "model.json").read_text())["diameters"],
                                    model.size_params)
    assert evaluate(general, [val])["map"] == pytest.approx(event["all_type_val_map"])
    if event["kept"]:
        assert evaluate(model, [val])["map"] == pytest.approx(event["val_map"])


def test_specialist_config_errors_and_a_missing_specialist_file(trained, tmp_path):
    for train, match in (({"specialize": {"glia": 2}}, "specialize: unknown cell type 'glia'"),
                         ({"specialize": {"astro": 0}}, "specialize.astro must be >= 1"),
                         ({"specialize_share": 1.0}, r"specialize_share must be in \(0, 1\)"),
                         ({"specialize_lr": -1.0}, "specialize_lr must be >= 0")):
        with pytest.raises(ConfigError, match=match):
            tiny_config(**train)
    _, ref_dir, _ = trained
    model = copy_listing_a_specialist(ref_dir, tmp_path / "model", "cellpose_net_astro")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "x.png"), np.zeros((64, 80), np.uint8))
    done = run_module("kit.predict", "--model", model, "--images", images, "--out",
                      tmp_path / "sub.csv", "--quiet")
    assert done.returncode == 2 and "astro specialist's weights file cellpose_net_astro is missing" \
        in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    (model / "cellpose_net_astro").write_bytes((model / kcp.WEIGHTS).read_bytes()[:500])
    done = run_module("kit.predict", "--model", model, "--images", images, "--out",
                      tmp_path / "sub.csv", "--quiet")
    assert done.returncode == 2 and str(model / "cellpose_net_astro") in done.stderr, done.stderr
    assert not (tmp_path / "sub.csv").exists()
