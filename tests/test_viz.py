"""kit.viz: outline colours where the TP / FP / FN masks are, figure layout, worst-K grid, CLI."""
import csv

import cv2
import numpy as np
import pytest

from kit import rle, viz
from tests.conftest import run_module

H, W = 60, 80
HEADER = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta\n"


def box(y, x, size):
    m = np.zeros((H, W), bool)
    m[y:y + size, x:x + size] = True
    return m


GT_TP, PRED_TP = box(5, 5, 15), box(6, 5, 15)  # IoU 14 * 15 / (16 * 15) = 0.875
GT_FN = box(35, 10, 15)  # no prediction near it
PRED_FP = box(35, 50, 15)  # no GT near it


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Image ``a``: 1 TP, 1 FP, 1 FN; image ``b``: a perfect prediction."""
    root = tmp_path_factory.mktemp("viz")
    (root / "train").mkdir()
    rng = np.random.default_rng(0)
    for id_ in ("a", "b"):
        cv2.imwrite(str(root / "train" / f"{id_}.png"),
                    rng.integers(90, 160, (H, W)).astype(np.uint8))
    rows = [("a", GT_TP, "cort"), ("a", GT_FN, "cort"), ("b", box(20, 30, 10), "astro")]
    (root / "train.csv").write_text(HEADER + "".join(
        f"{i},{rle.encode(m)},{W},{H},{t},t,d,{t}_s,e\n" for i, m, t in rows))
    (root / "pred.csv").write_text(
        f"id,predicted\na,{rle.encode(PRED_TP)}\na,{rle.encode(PRED_FP)}\n"
        f"b,{rle.encode(box(20, 30, 10))}\n")
    return root


def colour_masks(bgr):
    """(green, red, blue) bool masks of the outline colours in a cv2 (BGR) image."""
    b, g, r = (bgr[..., k].astype(int) for k in range(3))
    return ((g > 180) & (r < 80) & (b < 80), (r > 200) & (g < 80) & (b < 80),
            (b > 200) & (r < 80) & (g < 160))


def region(masks, y, x, size, s):
    """The part of the figure showing image rows y-1 .. y+size, cols x-1 .. x+size."""
    y0, x0 = viz.TITLE_PX + (y - 1) * s, (x - 1) * s
    return [m[y0:y0 + (size + 2) * s, x0:x0 + (size + 2) * s] for m in masks]


def test_overlay_counts_and_colours_by_match():
    image = np.full((H, W), 120, np.uint8)
    ov = viz.make_overlay(image, [rle.encode(GT_TP), rle.encode(GT_FN)],
                          [rle.encode(PRED_TP), rle.encode(PRED_FP)], id="a", cell_type="cort")
    assert (ov.tp, ov.fp, ov.fn) == (1, 1, 1)
    assert ov.score.score == pytest.approx(8 / 3 / 10)  # 1/3 at t = .50 .. .85, 0 at .90, .95
    assert ov.rgb.shape == (H, W, 3) and ov.rgb.dtype == np.uint8
    # outlines lie on the mask boundaries, in the right colour
    assert tuple(ov.rgb[5, 5]) == viz.TP_COLOR and tuple(ov.rgb[20, 12]) == viz.TP_COLOR
    assert tuple(ov.rgb[35, 15]) == viz.FN_COLOR and tuple(ov.rgb[49, 64]) == viz.FP_COLOR
    assert len(set(ov.rgb[12, 12].tolist())) == 1  # inside a mask: gray
    gm, pm = viz.match_masks([rle.encode(GT_TP), rle.encode(GT_FN)],
                             [rle.encode(PRED_FP), rle.encode(PRED_TP)], (H, W))
    assert gm.tolist() == [True, False] and pm.tolist() == [False, True]
    assert viz.figure_scale(704) == 1 and viz.figure_scale(W) == 6


def test_a_duplicate_prediction_is_drawn_as_a_false_positive():
    """The outlines follow the metric's one-to-one matching: the second copy of a matched
    prediction is FP (red), and the TP count equals the score's TP at 0.5."""
    image = np.full((H, W), 120, np.uint8)
    gt, pred = [rle.encode(GT_TP)], [rle.encode(PRED_TP), rle.encode(PRED_TP)]
    ov = viz.make_overlay(image, gt, pred)
    assert (ov.tp, ov.fp, ov.fn) == (1, 1, 0) == (ov.score.tp[0], ov.score.fp[0], ov.score.fn[0])
    gm, pm = viz.match_masks(gt + gt, pred[:1], (H, W))  # duplicate GT: one copy matched
    assert gm.sum() == 1 and pm.tolist() == [True]


def test_cli_figures_grid_and_scores(case, tmp_path):
    out = tmp_path / "out"
    done = run_module("kit.viz", "--gt", case, "--pred", case / "pred.csv", "--ids", "b",
                      "--worst", "1", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    s = viz.figure_scale(W)
    fig = cv2.imread(str(out / "a.png"))  # the worst image, drawn because of --worst 1
    assert fig is not None and fig.shape == (viz.TITLE_PX + H * s, W * s, 3)
    green, red, blue = colour_masks(fig)
    g, r, b = region((green, red, blue), 5, 5, 16, s)  # TP: GT and prediction outlines
    assert g.sum() > 50 and r.sum() == 0 and b.sum() == 0
    g, r, b = region((green, red, blue), 35, 50, 15, s)  # FP
    assert r.sum() > 50 and g.sum() == 0 and b.sum() == 0
    g, r, b = region((green, red, blue), 35, 10, 15, s)  # FN
    assert b.sum() > 50 and g.sum() == 0 and r.sum() == 0
    assert (green | red | blue)[:viz.TITLE_PX].sum() == 0  # title band: black text on white
    fig_b = cv2.imread(str(out / "b.png"))  # perfect prediction: only green
    green, red, blue = colour_masks(fig_b)
    assert green.sum() > 50 and red.sum() == 0 and blue.sum() == 0
    grid = cv2.imread(str(out / "worst_1.png"))
    assert grid is not None and grid.shape[0] > 200 and grid.shape[1] > 200
    assert all(m.sum() > 0 for m in colour_masks(grid))
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["a", "b"]  # lowest score first
    assert float(rows[0]["score"]) == pytest.approx(4 / 15, abs=1e-6)
    assert float(rows[1]["score"]) == 1.0
    assert (rows[0]["tp_50"], rows[0]["fp_50"], rows[0]["fn_50"]) == ("1", "1", "1")
    assert "MAP 0.2667" in done.stdout


def test_cli_errors_exit_2(case, tmp_path, capsys):
    done = run_module("kit.viz", "--gt", tmp_path / "nowhere", "--pred", case / "pred.csv",
                      "--out", tmp_path / "o")
    assert done.returncode == 2 and "nowhere" in done.stderr
    args = ["--gt", str(case), "--out", str(tmp_path / "o"), "--quiet"]
    assert viz.main([*args, "--pred", str(case / "pred.csv"), "--ids", "zzz"]) == 2
    assert "--ids: not in the ground truth" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,predicted\nq,1 1\n")
    assert viz.main([*args, "--pred", str(bad)]) == 2
    assert "not in the ground truth" in capsys.readouterr().err
    assert viz.main([*args, "--pred", str(case / "pred.csv"), "--images",
                     str(tmp_path / "noimg")]) == 2
    assert not (tmp_path / "o").exists()
