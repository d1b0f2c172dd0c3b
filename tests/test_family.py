"""The model-family protocol (kit.models.family): its law holds for every family, and a new
family plugs in with one registration and then trains, tunes and predicts through the CLIs."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from kit import CELL_TYPES
from kit.data import read_competition_dir
from kit.models.family import FitOptions, ModelFamily, load_raw, save_raw
from kit.models.registry import family, names, register, unregister

# ---------------------------------------------------------------------------------------------
# A toy family: threshold the local contrast, one connected component per cell. ``fit`` learns
# each cell type's threshold (Otsu of its training images' contrast); ``kit.tune`` tunes the
# threshold and the minimal area from cached contrast images.


class ToyModel:
    TYPE = "toy"

    def __init__(self, levels: dict):
        self.levels = {ct: dict(p) for ct, p in levels.items()}  # {ct: {"level", "min_area"}}

    def predict(self, image, cell_type):
        return TOY.postprocess_raw(TOY.predict_raw(self, image, cell_type), cell_type, {},
                                   TOY.tuning_state(self))


def contrast(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float32)
    return cv2.GaussianBlur(np.abs(img - cv2.GaussianBlur(img, (0, 0), 10)), (0, 0), 2)


class ToyFamily(ModelFamily):
    name = "toy"
    raw_format = "arrays"
    grids = {"level": (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0), "min_area": (0, 20, 60, 150)}
    tuned_keys = ("levels",)

    def fit(self, train, val, out: Path, options: FitOptions, log=None):
        self.load_config(options.config)
        levels = {}
        for ct in CELL_TYPES:
            values = [cv2.threshold(np.clip(contrast(r.load_image()), 0, 255).astype(np.uint8), 0,
                                    255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
                      for r in train if r.cell_type == ct]
            levels[ct] = {"level": float(np.mean(values)) if values else 4.0, "min_area": 20}
        if log:
            log("toy_fit", n_train=len(train), n_val=len(val))
        Path(out, "model.json").write_text(json.dumps({"type": self.name, "levels": levels}))
        return ToyModel(levels)

    def load(self, folder: Path):
        return ToyModel(json.loads(Path(folder, "model.json").read_text())["levels"])

    def predict_raw(self, model, image, cell_type, min_score=None):
        return {"contrast": contrast(image)}

    def postprocess_raw(self, raw, cell_type, params, state):
        p = {**state["levels"][cell_type], **params}
        fg = (raw["contrast"] > p["level"]).astype(np.uint8)
        n, cc, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= max(p["min_area"], 1)
        keep[0] = False
        lut = np.zeros(n, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1)
        return lut[cc]

    def tuning_state(self, model):
        return {"levels": {ct: dict(p) for ct, p in model.levels.items()}}

    def current_params(self, state, cell_type):
        return dict(state["levels"][cell_type])

    def tuned_document(self, state, best):
        return {"model_type": self.name,
                "levels": {ct: dict(best.get(ct, state["levels"][ct])) for ct in CELL_TYPES}}

    def apply_tuned(self, model, doc, where):
        for ct, p in (doc.get("levels") or {}).items():
            model.levels[ct].update(p)


TOY = ToyFamily()


@pytest.fixture()
def toy_registered():
    register(TOY, "tests.test_family:TOY")
    yield TOY
    unregister("toy")


def test_a_new_family_trains_tunes_and_predicts_through_the_clis(toy_registered, synth_dir, tmp_path):
    from kit import predict, train, tune
    from kit.submission import read_predictions

    assert "toy" in names(trainable=True)
    run = tmp_path / "toy"
    assert train.main(["toy", "--data", str(synth_dir), "--fold", "0", "--n-folds", "3",
                       "--out", str(run), "--quiet"]) == 0
    doc = json.loads((run / "model.json").read_text())
    assert doc["type"] == "toy" and set(doc["levels"]) == set(CELL_TYPES)
    oof = json.loads((run / "oof_score.json").read_text())
    assert 0.0 <= oof["map"] <= 1.0 and oof["selection"]["held_out_chooses"].startswith("nothing")
    events = [json.loads(x)["event"] for x in (run / "train.log").read_text().splitlines()]
    assert "toy_fit" in events and events[-1] == "oof"

    # tune on fold 1's images (a training fold: the held-out fold 0 chooses nothing)
    cache, tuned = tmp_path / "cache", tmp_path / "tuned.yaml"
    assert tune.main(["cache", "--model", str(run), "--data", str(synth_dir), "--fold", "1",
                      "--out", str(cache), "--quiet"]) == 0
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["model_type"] == "toy" and meta["sources"] == [{"format": "arrays", "dir": "s0"}]
    assert tune.main(["search", "--cache", str(cache), "--gt", str(synth_dir), "--out", str(tuned),
                      "--grid", "level=1,3,6,12", "--quiet"]) == 0
    from kit.models.tuned import read_tuned

    doc = read_tuned(tuned)
    assert doc["model_type"] == "toy" and set(doc["levels"]) == set(CELL_TYPES)

    # predict the test images with and without the tuned YAML
    test_images = synth_dir / "test"
    plain, tuned_sub = tmp_path / "plain.csv", tmp_path / "tuned.csv"
    assert predict.main(["--model", str(run), "--images", str(test_images), "--out", str(plain),
                         "--quiet"]) == 0
    assert predict.main(["--model", str(run), "--images", str(test_images), "--out", str(tuned_sub),
                         "--tuned", str(tuned), "--quiet"]) == 0
    ids = {r.id for r in read_competition_dir(synth_dir).test}
    assert set(read_predictions(plain)) == set(read_predictions(tuned_sub)) == ids


def test_unknown_family_is_a_clear_error(tmp_path):
    from kit.errors import ModelError
    from kit.models import load_model

    (tmp_path / "model.json").write_text('{"type": "toy"}')
    with pytest.raises(ModelError, match="unknown model type 'toy'; known types: .*baseline"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="unknown model type"):
        family("toy")


# ---------------------------------------------------------------------------------------------
# The law of the protocol, for every registered family:
#   predict(image, ct) == postprocess_raw(predict_raw(image, ct), ct, current_params, state)
# and the raw survives the cache format; so a search on cached raws sees what the model does.


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """{family name: a loaded model} of every registered family (tiny, random-init networks)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("cellpose")
    from kit.models import load_model
    from kit.models.baseline import BaselineModel
    from kit.models.cellpose import CellposeConfig, CellposeSegmenter
    from kit.models.cellpose.network import _new_cellpose_model
    from kit.models.ensemble import make_ensemble
    from tests.conftest import tiny_detectron2, tiny_maskrcnn

    d = tmp_path_factory.mktemp("families")
    torch.manual_seed(0)
    tiny_maskrcnn(d / "maskrcnn", score=0.0, nms=0.7, cell_type="given")
    BaselineModel().save(d / "baseline")
    make_ensemble(d / "ensemble", [(d / "maskrcnn", 1.0), (d / "baseline", 1.0)], ("id", "hflip"))
    models = {k: load_model(d / k) for k in ("maskrcnn", "baseline", "ensemble")}
    if importlib.util.find_spec("detectron2") is not None:   # optional: make detectron2
        models["detectron2"] = load_model(tiny_detectron2(d / "detectron2", score=0.0, nms=0.7,
                                                          cell_type="given"))
    ccfg = CellposeConfig(diam_mean=17.0)
    models["cellpose"] = CellposeSegmenter(_new_cellpose_model(17.0, inference=True), ccfg,
                                           {ct: {"diameter": 17.0} for ct in CELL_TYPES}, None)
    return models


@pytest.mark.usefixtures("torch_one_thread")
def test_every_family_renders_its_raw_output_as_it_predicts(family_models, synth_dir, tmp_path):
    from kit.synth import make_image

    image = make_image("cort", np.random.default_rng(1), (128, 160), n_cells=12).image
    optional = set() if "detectron2" in family_models else {"detectron2"}
    assert set(family_models) == set(names()) - optional
    for name, model in family_models.items():
        fam = family(name)
        state = json.loads(json.dumps(fam.tuning_state(model)))  # what cache.json keeps
        for ct in ("cort", "astro"):
            expected = fam.predict(model, image, ct)
            if name in ("baseline", "ensemble"):   # the random networks may find nothing
                assert expected.max() > 0, name
            raws = fam.raw_outputs(model, image, ct)
            sources = fam.cache_sources(model)
            assert len(raws) == len(sources)
            back = []
            for k, (s, raw) in enumerate(zip(sources, raws)):
                save_raw(s["format"], raw, tmp_path / f"{name}_{ct}_{k}.npz")
                back.append(load_raw(s["format"], tmp_path / f"{name}_{ct}_{k}.npz"))
            if any(s["format"] == "detections" for s in sources):  # the cache keeps float16 masks
                back = raws
            got = fam.render(back, state, ct, fam.current_params(state, ct))
            assert got.dtype == np.int32 and got.shape == image.shape
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} {ct}")
            # a tuned document makes the model predict what the search rendered
            current = fam.current_params(state, ct)
            tunable = fam.tunable_params(state)
            assert tunable and set(tunable) <= set(current)
            param = tunable[0]
            value = next(v for v in fam.grids[fam.grid_name(param)] if v != current[param])
            params = {**current, param: value}
            rendered = fam.render(back, state, ct, params)
            tuned = copy.deepcopy(model) if name == "baseline" else copy.copy(model)
            fam.apply_tuned(tuned, fam.tuned_document(state, {ct: params}), "test")
            np.testing.assert_array_equal(fam.predict(tuned, image, ct), rendered,
                                          err_msg=f"{name} {ct} tuned {param}={value}")
