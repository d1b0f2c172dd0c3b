"""Each trainable model trains a few steps on 4 real Sartorius images (../shared, skipped when
absent), and predicts a valid submission of the other images with the classifier's cell types."""
import pytest

from tests.conftest import REAL_SARTORIUS, needs_real_data, real_images, real_train_dir, run_module
from tests.test_report import TINY_CELLPOSE, TINY_MASKRCNN

pytestmark = needs_real_data


@pytest.fixture(scope="module")
def four_real(tmp_path_factory):
    """4 real training images (2 cort, 1 astro, 1 shsy5y) + 2 more (cort, astro) to predict."""
    chosen = real_images({"cort": 3, "astro": 2, "shsy5y": 1})
    root = tmp_path_factory.mktemp("four_real")
    predict = [next(i for i, ct in chosen.items() if ct == t) for t in ("cort", "astro")]
    train = [i for i in chosen if i not in predict]
    real_train_dir(root / "data", train)
    test = root / "predict"
    test.mkdir()
    for id_ in predict:
        (test / f"{id_}.png").symlink_to(REAL_SARTORIUS / "train" / f"{id_}.png")
    (root / "folds.csv").write_text("id,fold\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(train)))
    (root / "maskrcnn.yaml").write_text(TINY_MASKRCNN)
    (root / "cellpose.yaml").write_text(TINY_CELLPOSE)
    return root, train, predict


@pytest.mark.parametrize("model", ["baseline", "cellpose", "maskrcnn"])
def test_trains_on_four_real_images_and_predicts_a_valid_submission(four_real, model):
    from kit.submission import validate_submission

    root, train, predict = four_real
    out = root / "runs" / model
    extra = [] if model == "baseline" else ["--config", root / f"{model}.yaml", "--time-budget", "0.1"]
    done = run_module("kit.train", model, "--data", root / "data", "--folds", root / "folds.csv",
                      "--fold", 1, "--out", out, *extra, "--quiet")
    assert done.returncode == 0, done.stderr + done.stdout
    assert (out / "model.json").is_file() and (out / "oof.csv").is_file()
    sub = root / "runs" / f"{model}_submission.csv"
    done = run_module("kit.predict", "--model", out, "--images", root / "predict", "--out", sub, "--quiet")
    assert done.returncode == 0, done.stderr + done.stdout
    rows = validate_submission(sub, predict, shape=(520, 704))
    assert set(rows) == set(predict)
