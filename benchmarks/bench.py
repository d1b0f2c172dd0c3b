"""Speed of the kit's metric and RLE codec against the code competitors used.

Run: ``python -m benchmarks.bench`` (``--help`` for the options).

Everything is measured in one run on synthetic 520x704 label-image pairs made here (a ground
truth of elliptical cells and a prediction with shifted, eroded/dilated, dropped and split
instances plus false positives), with the competition's mix of cell types and instance counts.

Tasks and peers (peers live in :mod:`benchmarks.peers`):

* score  -- :func:`kit.metric.image_score` on label images vs the "histogram2d notebook",
  ``cellpose.metrics.average_precision`` and a FLOOR (one numba pass reading both images).
* encode -- :func:`kit.rle.encode_labels` vs the per-mask notebook ``rle_encode`` and
  pycocotools ``mask.encode`` (column-major COCO: a speed reference only).
* decode -- :func:`kit.rle.decode_labels` vs the notebook ``rle_decode`` painted mask by mask
  into a label image, and pycocotools ``mask.decode`` (to an (H, W, N) stack, no painting).
* score_rle -- :func:`kit.metric.image_score` on lists of RLE strings whose masks overlap (how
  real ground truth arrives: the real train.csv of ``--real-gt``, by default
  ``../shared/data/sartorius/train.csv`` when present, against a perturbed copy of it; else
  synthetic overlapping lists, see :mod:`kit._bench_overlap`) vs the notebook path (decode
  every RLE with numpy, paint label images, histogram2d). Timed only: painting loses the
  overlaps, so the notebook's numbers differ from the exact ones by design (the kit's are
  checked against an independent reference in the tests). The same files also time
  ``python -m kit.cv`` end to end (a subprocess: start-up, reading, scoring).

Before anything is timed the peers are checked against the kit on the same images: TP/FP/FN
at every (image, threshold), with IoUs that equal a threshold exactly replayed the peer's way
(see :func:`check_scores`), image scores, encoded strings and decoded label images. The exit
status is 1 when a check fails; the timing targets are only reported (PASS/FAIL in the table).

Timing: ``time.perf_counter`` around every call, garbage collector off, numba JIT compiled
before (a warm-up call), best of ``--repeat`` passes over the images, the passes of all the
implementations interleaved, and before each pass one untimed read of every input image
(see :func:`settle`). Slow cellpose is timed on the first ``--cellpose-images`` images
(the image order keeps the cell-type mix in every prefix) and compared with the kit on those.
Every timed function is single-threaded (no numba ``parallel=True``; numpy's
histogram/unique/where do not use BLAS); torch, imported by cellpose, is set to one thread and
``*_NUM_THREADS`` to 1 so that no idle pool competes: OMP/torch threads do not change the
numbers. The machine is shared: the load average is printed with the results.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from kit import IMAGE_SHAPE, package_versions

# Competition train statistics (EDA of its train.csv: 606 images, 73,585 masks): images per type,
# cells per image mean / sd / min / max, mask area mean / min / max in pixels. The aspect range
# (minor / major axis of the ellipses) is a guess from looking at the cell types.
CELL_MIX = {
    "cort": dict(images=320, n_mean=33.7, n_sd=16.5, n_min=4, n_max=108,
                 area_mean=240, area_min=33, area_max=2054, aspect=(0.45, 1.0)),
    "shsy5y": dict(images=155, n_mean=337, n_sd=150, n_min=49, n_max=790,
                   area_mean=225, area_min=30, area_max=2254, aspect=(0.25, 0.8)),
    "astro": dict(images=131, n_mean=80, n_sd=64, n_min=5, n_max=594,
                  area_mean=906, area_min=37, area_max=13327, aspect=(0.3, 1.0)),
}
AREA_SIGMA = 0.6  # log-normal spread of mask areas (a guess)

# Prediction perturbation, per ground-truth instance.
P_DROP = 0.08       # instance missing from the prediction
P_SPLIT = 0.06      # instance predicted as two pieces
SPLIT_ANGLES = (110.0, 250.0)  # the second piece: a sector of this many degrees
P_FALSE_POS = 0.06  # extra predicted blobs, as a fraction of the ground-truth count
SHIFT_SD = 1.5      # centre shift, pixels
SCALE_RANGE = (0.8, 1.08)  # axis scale: mostly eroded, sometimes dilated
ANGLE_SD = 8.0      # degrees

SUBPIXEL_BITS = 4   # cv2 drawing with fractional coordinates

TARGETS = (
    # Set by the kit's lead for this bench.
    # (task, peer, kind, value): "speedup" = peer time / kit time >= value;
    # "over_floor" = kit time / floor time <= value.
    ("score", "cellpose", "speedup", 20.0),
    ("score", "floor", "over_floor", 2.0),
    ("encode", "notebook", "speedup", 50.0),
    ("decode", "notebook", "speedup", 15.0),
    ("score_rle", "notebook", "speedup", 50.0),
    ("score_rle", "kit", "max_ms", 1.0),
)

QUICK = dict(n_images=6, repeat=1, cellpose_images=3, rle_images=9, notebook_rle_images=3)


# ---------------------------------------------------------------------------------------------
# Synthetic data


def cell_type_order(n: int) -> list[str]:
    """``n`` cell types in the competition's proportions, interleaved so that every prefix
    (the subsets that slow peers are timed on) keeps the mix as well as it can."""
    types = list(CELL_MIX)
    share = np.array([CELL_MIX[t]["images"] for t in types], float)
    share /= share.sum()
    count = np.zeros(len(types))
    out = []
    for i in range(n):
        k = int(np.argmax(share * (i + 1) - count))
        count[k] += 1
        out.append(types[k])
    return out


def _n_cells(rng: np.random.Generator, spec: dict) -> int:
    shape = (spec["n_mean"] / spec["n_sd"]) ** 2  # gamma with the given mean and sd
    n = rng.gamma(shape, spec["n_mean"] / shape)
    return int(np.clip(round(n), spec["n_min"], spec["n_max"]))


def _ellipses(rng: np.random.Generator, spec: dict, n: int, shape) -> np.ndarray:
    """(n, 5) float: centre x, centre y, semi-axis a, semi-axis b, angle in degrees."""
    mu = np.log(spec["area_mean"]) - AREA_SIGMA ** 2 / 2
    area = np.clip(rng.lognormal(mu, AREA_SIGMA, n), spec["area_min"], spec["area_max"])
    aspect = rng.uniform(*spec["aspect"], n)
    a = np.sqrt(area / (np.pi * aspect))
    h, w = shape
    return np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n), a, a * aspect,
                     rng.uniform(0, 180, n)], axis=1)


def _draw(img: np.ndarray, e, label: int, start: float = 0.0, end: float = 360.0) -> None:
    import cv2

    f = 1 << SUBPIXEL_BITS
    cv2.ellipse(img, (int(round(e[0] * f)), int(round(e[1] * f))),
                (max(1, int(round(e[2] * f))), max(1, int(round(e[3] * f)))),
                float(e[4]), start, end, int(label), -1, cv2.LINE_8, SUBPIXEL_BITS)


def make_pair(rng: np.random.Generator, cell_type: str, shape=IMAGE_SHAPE):
    """(gt, pred) int32 label images of one synthetic image of ``cell_type``.

    Ground truth: labels 1..N in drawing order (a cell drawn over completely leaves a gap).
    Prediction: cell i keeps label i + 1 unless dropped (a gap); split pieces and false
    positives get labels above N. Later cells are drawn over earlier ones on both sides.
    """
    spec = CELL_MIX[cell_type]
    n = _n_cells(rng, spec)
    cells = _ellipses(rng, spec, n, shape)
    gt = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    fate = rng.uniform(size=n)
    next_label = n + 1
    for i, e in enumerate(cells):
        _draw(gt, e, i + 1)
        if fate[i] < P_DROP:
            continue
        if fate[i] < P_DROP + P_SPLIT:
            _draw(pred, e, i + 1)
            # A sector of 30-70 % of the ellipse becomes another cell (not exactly half: an
            # exact half gives IoU 0.5 exactly, a tie that real predictions rarely make).
            _draw(pred, e, next_label, 0.0, rng.uniform(*SPLIT_ANGLES))
            next_label += 1
            continue
        q = e.copy()
        q[:2] += rng.normal(0, SHIFT_SD, 2)
        q[2:4] *= rng.uniform(*SCALE_RANGE)
        q[4] += rng.normal(0, ANGLE_SD)
        _draw(pred, q, i + 1)
    n_fp = rng.binomial(n, P_FALSE_POS)
    for e in _ellipses(rng, spec, n_fp, shape):
        _draw(pred, e, next_label)
        next_label += 1
    return gt, pred


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """int32 labels 0..K (present labels in ascending order), as cellpose and the notebook need."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int32)
    return out if uniq[0] == 0 else out + 1


# ---------------------------------------------------------------------------------------------
# Timing


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False,
                mininterval=0.5)


def time_pass(fn, make_args, images, wall: np.ndarray, cpu: np.ndarray, bar=None) -> None:
    """Time ``fn(*make_args(i))`` once per image ``i`` in ``images`` into ``wall[i]`` and
    ``cpu[i]`` (seconds of ``time.perf_counter`` and of this thread's CPU clock).

    ``make_args`` is not timed; the result is freed inside the timed span (freeing is part of
    the cost); the garbage collector is off while timing.
    """
    clock, cpu_clock = time.perf_counter, time.thread_time
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in images:
            args = make_args(i)
            c0 = cpu_clock()
            t0 = clock()
            fn(*args)
            t1 = clock()
            c1 = cpu_clock()
            wall[i] = t1 - t0
            cpu[i] = c1 - c0
            del args
            if bar is not None:
                bar.update()
    finally:
        if gc_was:
            gc.enable()


def settle(pairs) -> None:
    """Read every (gt, pred) array pair once, untimed.

    Called before every timed pass. A pass that allocates and frees gigabytes (pycocotools'
    (H, W, N) stacks) leaves a virtual machine slow to touch memory for a while: measured here,
    the kit's scorer took 1.8 ms per image on its first 40 images right after the pycocotools
    decode pass instead of 0.14 ms, and the floor 1.6 ms instead of 0.10 ms. After this read
    the next pass runs at its own speed. The read streams every pair in order (over a GB for
    200 images, far past any CPU cache), so the pass that follows still starts cold.
    """
    from benchmarks import peers

    for g, p in pairs:
        peers.floor_read_both(g, p)


def _best_ms(times: np.ndarray, idx=None) -> float:
    """ms/image of the fastest pass over the images ``idx`` (all when None)."""
    t = times if idx is None else times[:, idx]
    return float(t.sum(axis=1).min() / t.shape[1] * 1e3)


# ---------------------------------------------------------------------------------------------
# Agreement checks (before timing)


def _tie_shift(inter, union, thresholds, op, rule) -> np.ndarray:
    """(3, 10) int (dTP, dFP, dFN) that IoU ties make a peer add to the kit's counts.

    A tie is a pair whose IoU equals threshold k exactly (integers: 20 I == (10 + k) U). The
    kit never matches it (IoU > t, exact); a peer matches it when its float64 comparison
    ``op(I / U, thresholds[k])`` says so. Tie pairs never conflict with pairs above the
    threshold, but at t = 0.5 two ties can share an instance (a cell cut in exact halves),
    so the shift follows the peer's rule: ``"one_to_one"`` (cellpose's assignment: a maximum
    matching of the accepted ties) or ``"notebook"`` (TP = rows with exactly one match,
    FP = columns with none, FN = rows with none).
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols = np.nonzero(inter)
    i, u = inter[rows, cols], union[rows, cols]
    iou = i / u
    out = np.zeros((3, 10), np.int64)
    for k in range(10):
        acc = (20 * i == (10 + k) * u) & op(iou, thresholds[k])
        r, c = rows[acc], cols[acc]
        if not r.size:
            continue
        if rule == "one_to_one":
            ur, ri = np.unique(r, return_inverse=True)
            uc, ci = np.unique(c, return_inverse=True)
            m = np.zeros((len(ur), len(uc)))
            m[ri, ci] = 1
            a, b = linear_sum_assignment(m, maximize=True)
            out[:, k] = int(m[a, b].sum())
        else:
            ur, n_per_row = np.unique(r, return_counts=True)
            out[:, k] = (np.count_nonzero(n_per_row == 1), len(np.unique(c)), len(ur))
    return out


def _n_ties(inter, union) -> np.ndarray:
    nz = inter > 0
    i, u = inter[nz], union[nz]
    return np.array([np.count_nonzero(20 * i == (10 + k) * u) for k in range(10)])


def _check(name, unit, n_images, n_compared, n_ties, mismatches, extra=None) -> dict:
    out = {"name": name, "unit": unit, "passed": bool(not mismatches and n_compared > 0),
           "n_images": int(n_images), "n_compared": int(n_compared),
           "n_tie_pairs": int(n_ties), "n_mismatch": len(mismatches),
           "mismatches": mismatches[:5]}
    out.update(extra or {})
    return out


def check_scores(data, seq, idx, peer, name, tol, progress) -> tuple[dict, list]:
    """Compare kit.metric.image_score with a peer (given sequential labels) on images ``idx``.

    ``peer`` = (counts_fn, score_fn, thresholds, op, rule). TP/FP/FN are compared at every
    (image, threshold). Where an IoU equals a threshold exactly (frequent with integer pixel
    counts) the kit (``IoU > t``, exact) and a peer (float ``>`` or ``>=``) may rightly
    differ: the peer's handling of those tie pairs is replayed (:func:`_tie_shift`) and the
    kit's counts shifted by it before comparing. Image scores are compared directly on images
    without a tie.
    """
    from benchmarks import peers
    from kit.metric import image_score

    counts_fn, score_fn, thresholds, op, rule = peer
    compared = n_ties = n_tie_matches = images_compared = 0
    bad, kit_scores = [], []
    with _bar(len(idx), f"check {name}", progress) as bar:
        for i in idx:
            kit = image_score(data[i][1], data[i][2])
            kit_scores.append(kit.score)
            inter, union = peers.hist2d_intersections(*seq[i])
            d = _tie_shift(inter, union, thresholds, op, rule)
            ties = _n_ties(inter, union)
            n_ties += int(ties.sum())
            n_tie_matches += int(d[0].sum())
            expect = np.array([kit.tp + d[0], kit.fp - d[1], kit.fn - d[2]])
            peer_counts = counts_fn(*seq[i])
            compared += 10
            for k in np.flatnonzero((expect != peer_counts).any(axis=0)):
                bad.append({"image": int(i), "threshold_index": int(k),
                            "kit_tp_fp_fn": [int(kit.tp[k]), int(kit.fp[k]), int(kit.fn[k])],
                            "tie_shift": d[:, k].tolist(),
                            "peer_tp_fp_fn": peer_counts[:, k].tolist()})
            if not ties.any():
                images_compared += 1
                peer_s = score_fn(*seq[i])
                if not abs(kit.score - peer_s) <= tol:
                    bad.append({"image": int(i), "kit_score": kit.score, "peer_score": peer_s})
            bar.update()
    return _check(name, "image-thresholds", len(idx), compared, n_ties, bad,
                  {"n_images_score_compared": images_compared,
                   "n_tie_pairs_matched_by_peer": n_tie_matches}), kit_scores


def check_codec(data, progress) -> tuple[list[dict], list, list]:
    """Encode/decode agreement on every image; returns the checks, the kit's RLE lists of the
    ground truths and their COCO RLEs (inputs of the decode timings)."""
    from benchmarks import peers
    from kit.rle import decode_labels, encode_labels

    n = len(data)
    enc_bad, dec_bad, round_bad, coco_bad = [], [], [], []
    rles, cocos = [], []
    with _bar(n, "check codec", progress) as bar:
        for i, (_, gt, _) in enumerate(data):
            kit_rles = encode_labels(gt)
            if kit_rles != peers.notebook_encode_labels(gt):
                enc_bad.append({"image": i})
            kit_lab = decode_labels(kit_rles, gt.shape)
            if not np.array_equal(kit_lab, peers.notebook_decode_labels(kit_rles, gt.shape)):
                dec_bad.append({"image": i})
            if not np.array_equal(kit_lab, relabel_sequential(gt)):
                round_bad.append({"image": i})
            stack = peers.coco_stack(gt)
            coco = peers.coco_encode(stack)
            if not np.array_equal(peers.coco_decode(coco), stack):
                coco_bad.append({"image": i})
            rles.append(kit_rles)
            cocos.append(coco)
            del stack
            bar.update()
    checks = [
        _check("encode: kit == notebook strings", "images", n, n, 0, enc_bad),
        _check("decode: kit == notebook labels", "images", n, n, 0, dec_bad),
        _check("decode(encode(gt)) == gt relabelled", "images", n, n, 0, round_bad),
        _check("pycocotools decode(encode) == stack", "images", n, n, 0, coco_bad),
    ]
    return checks, rles, cocos


# ---------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--n-images", type=int, default=200,
                   help="synthetic 520x704 GT/prediction pairs (competition cell-type mix)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    g = p.add_argument_group("timing")
    g.add_argument("--repeat", type=int, default=3, help="passes over the images; best is kept")
    g.add_argument("--cellpose-images", type=int, default=40,
                   help="cellpose.metrics is timed on the first this many images (same mix)")
    g.add_argument("--quick", action="store_true",
                   help=f"tiny run for tests: {QUICK['n_images']} images, "
                        f"{QUICK['repeat']} pass, cellpose on {QUICK['cellpose_images']}, "
                        f"{QUICK['rle_images']} RLE-list images, the notebook on "
                        f"{QUICK['notebook_rle_images']}")
    g = p.add_argument_group("overlapping RLE lists (score_rle)")
    from benchmarks.overlap import DEFAULT_REAL_GT

    g.add_argument("--real-gt", type=Path, metavar="TRAIN_CSV",
                   default=DEFAULT_REAL_GT if DEFAULT_REAL_GT.is_file() else None,
                   help="real train.csv-format GT, scored against a perturbed copy (default: the "
                        "shared real GT when present, else synthetic overlapping lists)")
    g.add_argument("--synthetic-rle", action="store_true",
                   help="use synthetic overlapping lists even when real GT is present")
    g.add_argument("--rle-images", type=int, default=0,
                   help="score_rle on the first this many images (cell-type mix kept); 0 = all")
    g.add_argument("--notebook-rle-images", type=int, default=40,
                   help="the notebook RLE path is timed on the first this many of them")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="OUT", type=Path, help="also save every number here")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars on stderr")
    return p


def _set_threads() -> dict:
    """Pin thread pools to one thread (see the module docstring); returns what was set."""
    env = {k: "1" for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                            "OPENBLAS_NUM_THREADS")}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in env}


def _fmt_ratio(x: float) -> str:
    return f"{x:,.1f}x" if x < 100 else f"{x:,.0f}x"


def _table(rows, header, align) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  " + "  ".join(c.ljust(w) if a == "<" else c.rjust(w)
                                      for c, w, a in zip(r, widths, align)).rstrip())
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _time_all(data, seq, rles, cocos, idx_cellpose, overlap, n_notebook_rle, repeat,
              progress) -> dict:
    """{(task, impl): (label, wall, cpu, images)}: wall/cpu are (repeat, n_items) seconds,
    n_items the size of the task's data set, NaN for items the implementation was not timed
    on. ``overlap``: the score_rle pairs (:mod:`kit._bench_overlap`).

    Passes are interleaved: pass r of every implementation runs before pass r + 1 of any, so
    the repeats of each one spread over the whole run and the best pass escapes a busy spell
    of the machine instead of sitting in it. Before every pass all input images are read once
    (:func:`settle`), so no pass pays for the memory churn of the one before it.
    """
    from benchmarks import peers
    from kit.metric import image_score
    from kit.rle import decode_labels, encode_labels

    n = len(data)
    shape = IMAGE_SHAPE
    every = np.arange(n)
    every_rle = np.arange(len(overlap))

    def rle_args(i):  # (gt RLEs, predicted RLEs, shape)
        return overlap[i][3], overlap[i][4], overlap[i][2]

    jobs = [
        ("score", "kit", "kit.metric.image_score", image_score,
         lambda i: (data[i][1], data[i][2]), every),
        ("score", "floor", "FLOOR: numba pass reading both images", peers.floor_read_both,
         lambda i: (data[i][1], data[i][2]), every),
        ("score", "hist2d", "histogram2d notebook", peers.hist2d_image_score,
         lambda i: seq[i], every),
        ("score", "cellpose", "cellpose.metrics.average_precision",
         peers.cellpose_image_score, lambda i: seq[i], np.asarray(idx_cellpose)),
        ("encode", "kit", "kit.rle.encode_labels", encode_labels, lambda i: (data[i][1],), every),
        ("encode", "notebook", "notebook rle_encode per mask", peers.notebook_encode_labels,
         lambda i: (data[i][1],), every),
        # the (H, W, N) stack is built outside the timed span
        ("encode", "pycocotools", "pycocotools mask.encode (col-major)", peers.coco_encode,
         lambda i: (peers.coco_stack(data[i][1]),), every),
        ("decode", "kit", "kit.rle.decode_labels", decode_labels,
         lambda i: (rles[i], shape), every),
        ("decode", "notebook", "notebook rle_decode per mask", peers.notebook_decode_labels,
         lambda i: (rles[i], shape), every),
        ("decode", "pycocotools", "pycocotools mask.decode (to stack)", peers.coco_decode,
         lambda i: (cocos[i],), every),
        ("score_rle", "kit", "kit.metric.image_score (RLE lists)", image_score, rle_args,
         every_rle),
        ("score_rle", "notebook", "notebook rle_decode + paint + histogram2d",
         peers.notebook_rle_image_score, rle_args, every_rle[:n_notebook_rle]),
    ]
    inputs = [(g, p) for _, g, p in data] + seq
    size = {task: (len(overlap) if task == "score_rle" else n) for task, *_ in jobs}
    runs = {(task, impl): (label, np.full((repeat, size[task]), np.nan),
                           np.full((repeat, size[task]), np.nan), images)
            for task, impl, label, _, _, images in jobs}
    total = repeat * sum(len(j[5]) for j in jobs)
    with _bar(total, "timing", progress) as bar:
        for r in range(repeat):
            for task, impl, _, fn, make_args, images in jobs:
                bar.set_description(f"timing pass {r + 1}/{repeat}: {task} {impl}")
                _, wall, cpu, _ = runs[(task, impl)]
                settle(inputs)
                time_pass(fn, make_args, images, wall[r], cpu[r], bar)
    return runs


def _time_kit_cv(overlap, real_gt: Path | None, rle_images: int) -> float:
    """Wall seconds of ``python -m kit.cv --gt GT --pred PRED`` (a subprocess: start-up,
    reading and validating both files, scoring, writing the JSON) on the score_rle images;
    GT is ``real_gt`` itself when every image of it is used."""
    import subprocess
    import tempfile

    from benchmarks import overlap as overlap_data

    with tempfile.TemporaryDirectory(prefix="kit-bench-cv-") as tmp:
        tmp = Path(tmp)
        overlap_data.write_csvs(overlap, tmp / "gt.csv", tmp / "pred.csv")
        gt = real_gt if real_gt is not None and not rle_images else tmp / "gt.csv"
        cmd = [sys.executable, "-m", "kit.cv", "--gt", str(gt), "--pred", str(tmp / "pred.csv"),
               "--quiet", "--json", str(tmp / "cv.json")]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return wall


def _timing_table(runs, types, rle_types) -> dict:
    """ms/image (best pass) of every implementation, and its ratio to the kit on the same
    images, overall and by cell type (``rle_types``: those of the score_rle images)."""
    timings = {}
    for (task, impl), (label, wall, cpu, images) in runs.items():
        kit_wall = runs[(task, "kit")][1]
        ms = _best_ms(wall, images)
        kit_ms = _best_ms(kit_wall, images)
        by_type = {}
        item_types = rle_types if task == "score_rle" else types
        for t in CELL_MIX:
            sel = np.array([i for i in images if item_types[i] == t], int)
            if sel.size:
                by_type[t] = _best_ms(wall, sel)
        timings.setdefault(task, {})[impl] = {
            "label": label, "n_images": int(images.size),
            "ms_per_image": ms, "kit_ms_per_image_same_images": kit_ms,
            "ratio_to_kit": ms / kit_ms,
            "cpu_ms_per_image": _best_ms(cpu, images),
            "pass_ms_per_image": [float(x) for x in wall[:, images].mean(axis=1) * 1e3],
            "by_cell_type_ms_per_image": by_type,
        }
    return timings


def _targets(timings) -> list[dict]:
    out = []
    for task, peer, kind, value in TARGETS:
        r = timings[task][peer]["ratio_to_kit"]
        if kind == "speedup":
            name, measured, ok = f"{task}: kit >= {value:g}x faster than {peer}", r, r >= value
        elif kind == "max_ms":
            ms = timings[task][peer]["ms_per_image"]
            name, measured, ok = f"{task}: kit <= {value:g} ms per image", ms, ms <= value
        else:
            name, measured, ok = f"{task}: kit <= {value:g}x the floor", 1 / r, 1 / r <= value
        out.append({"name": name, "task": task, "peer": peer, "kind": kind,
                    "target": value, "measured": float(measured), "passed": bool(ok)})
    return out


def run_bench(n_images: int = 200, seed: int = 0, repeat: int = 3, cellpose_images: int = 40,
              progress: bool = True, real_gt: Path | None = None, rle_images: int = 0,
              notebook_rle_images: int = 40) -> dict:
    """Make the data, check the peers, time everything; returns every number (JSON-ready)."""
    threads = _set_threads()
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    import operator
    import tracemalloc

    import cv2

    cv2.setNumThreads(1)
    from benchmarks import peers
    from kit.metric import image_score
    from kit.rle import decode_labels, encode_labels

    # -- data ---------------------------------------------------------------------------------
    rng = np.random.default_rng(seed)
    types = cell_type_order(n_images)
    data = [(t, *make_pair(rng, t)) for t in _iter(types, "make images", progress)]
    seq = [(relabel_sequential(g), relabel_sequential(p)) for _, g, p in data]
    n = len(data)
    n_cp = min(cellpose_images, n)
    n_gt = np.array([len(np.unique(g)) - 1 for _, g, _ in data])
    n_pred = np.array([len(np.unique(p)) - 1 for _, _, p in data])
    from benchmarks import overlap as overlap_data

    overlap = overlap_data.interleaved(overlap_data.real_pairs(real_gt, seed) if real_gt else
                                       overlap_data.synthetic_pairs(data, seed))
    overlap = overlap[:rle_images or None]
    n_nb = min(notebook_rle_images, len(overlap))

    # -- warm-up: JIT compile (numba caches to disk; cellpose's kernel is not cached) ----------
    t0 = time.perf_counter()
    importlib.import_module("cellpose.metrics")  # imports torch

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, g0, p0 = data[0]
    image_score(g0, p0)
    decode_labels(encode_labels(g0), g0.shape)
    peers.floor_read_both(g0, p0)
    peers.cellpose_image_score(*seq[0])
    image_score(*overlap[0][3:], overlap[0][2])
    t_jit = time.perf_counter() - t0

    # -- agreement checks -----------------------------------------------------------------------
    hist2d = (peers.hist2d_counts, peers.hist2d_image_score, peers.NOTEBOOK_THRESHOLDS,
              operator.gt, "notebook")
    cellpose = (peers.cellpose_counts, peers.cellpose_image_score, peers.THRESHOLDS,
                operator.ge, "one_to_one")
    chk_h, kit_scores = check_scores(data, seq, range(n), hist2d, "score: kit == histogram2d",
                                     1e-12, progress)
    chk_c, _ = check_scores(data, seq, range(n_cp), cellpose, "score: kit == cellpose", 1e-6,
                            progress)
    codec_checks, rles, cocos = check_codec(data, progress)
    checks = [chk_h, chk_c] + codec_checks

    # -- timings --------------------------------------------------------------------------------
    runs = _time_all(data, seq, rles, cocos, np.arange(n_cp), overlap, n_nb, repeat, progress)
    rle_types = [p[1] for p in overlap]
    timings = _timing_table(runs, types, rle_types)
    rle_scores = [image_score(g, p, s, cell_type=c) for _, c, s, g, p in overlap]
    cv_wall = _time_kit_cv(overlap, real_gt, rle_images)

    # -- peak memory of the kit on the most crowded image --------------------------------------
    big = int(np.argmax(n_gt))
    peak = {}
    big_rle = int(np.argmax([len(p[3]) for p in overlap]))
    for name, fn, a in (("score", image_score, (data[big][1], data[big][2])),
                        ("score_rle", image_score, (*overlap[big_rle][3:], overlap[big_rle][2])),
                        ("encode", encode_labels, (data[big][1],)),
                        ("decode", decode_labels, (rles[big], IMAGE_SHAPE))):
        tracemalloc.start()
        fn(*a)
        peak[name] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    counts = {t: types.count(t) for t in CELL_MIX}
    return {
        "config": {"n_images": n, "seed": seed, "repeat": repeat, "cellpose_images": n_cp,
                   "image_shape": list(IMAGE_SHAPE)},
        "environment": {
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads,
            "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
            "versions": package_versions(("numpy", "numba", "cellpose", "pycocotools",
                                             "opencv-python-headless")),
        },
        "dataset": {"cell_types": counts, "gt_instances": int(n_gt.sum()),
                    "pred_instances": int(n_pred.sum()),
                    "gt_instances_mean": float(n_gt.mean()),
                    "kit_score_mean": float(np.mean(kit_scores)),
                    "kit_score_by_cell_type": {
                        t: float(np.mean([s for s, ty in zip(kit_scores, types) if ty == t]))
                        for t in CELL_MIX if counts[t]}},
        "rle_dataset": {
            "source": str(real_gt) if real_gt else "synthetic", "n_images": len(overlap),
            "notebook_images": n_nb,
            "cell_types": {t: rle_types.count(t) for t in CELL_MIX if t in rle_types},
            "gt_masks": sum(len(p[3]) for p in overlap),
            "pred_masks": sum(len(p[4]) for p in overlap),
            "kit_score_mean": float(np.mean([s.score for s in rle_scores])),
            "kit_score_min": float(min(s.score for s in rle_scores)),
            "kit_score_max": float(max(s.score for s in rle_scores)),
            "kit_cv_wall_s": cv_wall},
        "warmup_s": {"cellpose_torch_import": t_import, "jit_first_calls": t_jit},
        "checks": checks, "all_checks_passed": all(c["passed"] for c in checks),
        "timings": timings, "targets": _targets(timings),
        "kit_peak_memory_mb": peak,
        "wall_s": time.perf_counter() - t_start,
    }


def _main(argv=None) -> int:
    """CLI: print the report, optionally save the JSON; exit 1 when a peer check fails."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.n_images, args.repeat = QUICK["n_images"], QUICK["repeat"]
        args.cellpose_images = QUICK["cellpose_images"]
        args.rle_images = QUICK["rle_images"]
        args.notebook_rle_images = QUICK["notebook_rle_images"]
    for opt in ("n_images", "repeat", "cellpose_images", "notebook_rle_images"):
        if getattr(args, opt) < 1:
            parser.error(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
    if args.rle_images < 0:
        parser.error(f"--rle-images must be >= 0, got {args.rle_images}")
    if args.json:
        from kit.atomic import check_writable

        check_writable(args.json, "--json output")  # before a run of minutes
    real_gt = None if args.synthetic_rle else args.real_gt
    if real_gt is not None and not real_gt.is_file():
        parser.error(f"--real-gt {real_gt}: no such file")
    result = run_bench(args.n_images, args.seed, args.repeat, args.cellpose_images,
                       progress=not args.no_progress, real_gt=real_gt,
                       rle_images=args.rle_images, notebook_rle_images=args.notebook_rle_images)
    result["config"]["quick"] = args.quick
    print("\n".join(report_lines(result)))
    if args.json:
        from kit.atomic import atomic_open

        with atomic_open(args.json, "w") as f:
            f.write(json.dumps(result, indent=1, allow_nan=False) + "\n")
    return 0 if result["all_checks_passed"] else 1


def _iter(seq, desc, progress):
    with _bar(len(seq), desc, progress) as bar:
        for x in seq:
            yield x
            bar.update()


def report_lines(res: dict) -> list[str]:
    cfg, ds, env = res["config"], res["dataset"], res["environment"]
    mix = ", ".join(f"{t} {c}" for t, c in ds["cell_types"].items())
    scores = ", ".join(f"{t} {s:.3f}" for t, s in ds["kit_score_by_cell_type"].items())
    la0, la1 = env["loadavg_start"][0], env["loadavg_end"][0]
    out = [
        f"benchmarks.bench: {cfg['n_images']} synthetic {cfg['image_shape'][0]}x{cfg['image_shape'][1]} "
        f"GT/prediction pairs (seed {cfg['seed']}): {mix}",
        f"  {ds['gt_instances']:,} GT instances ({ds['gt_instances_mean']:.0f}/image), "
        f"{ds['pred_instances']:,} predicted; kit score {ds['kit_score_mean']:.3f} ({scores})",
        f"  best of {cfg['repeat']} interleaved pass(es), perf_counter per call, gc off, single "
        f"thread, JIT warm-up excluded ({res['warmup_s']['jit_first_calls']:.1f} s); "
        f"{env['cpu_count']} CPUs, load average {la0:.2f} -> {la1:.2f}",
    ]
    rd = res["rle_dataset"]
    rmix = ", ".join(f"{t} {c}" for t, c in rd["cell_types"].items())
    out += [
        f"score_rle: {rd['n_images']} images of {rd['source']} ({rmix}), {rd['gt_masks']:,} GT "
        f"masks as RLE lists (overlaps kept) vs a perturbed copy ({rd['pred_masks']:,} masks); "
        f"kit score {rd['kit_score_mean']:.3f} (min {rd['kit_score_min']:.3f}, max "
        f"{rd['kit_score_max']:.3f})",
        "",
        "Peer agreement (checked before timing)",
    ]
    rows = [[c["name"], c["n_images"], c["n_compared"], c["unit"], c["n_mismatch"],
             "PASS" if c["passed"] else "FAIL"] for c in res["checks"]]
    out += _table(rows, ["check", "images", "compared", "unit", "mismatches", "result"],
                  "<>><><")
    for c in res["checks"]:
        if "n_tie_pairs" in c and c["unit"] == "image-thresholds":
            out.append(f"  {c['name']}: {c['n_tie_pairs']} (pair, threshold) IoU ties, "
                       f"{c['n_tie_pairs_matched_by_peer']} matched by the peer (float compare, "
                       f"its matching rule) and replayed; scores equal on "
                       f"{c['n_images_score_compared']} tie-free images")
    out += ["", "Timings (ms per image, best pass; cpu ms = this thread's CPU time, ratios use "
            "ms/image)"]
    rows = []
    note = False
    for task, impls in res["timings"].items():
        for impl, t in impls.items():
            star = "*" if t["n_images"] < impls["kit"]["n_images"] else ""
            note |= bool(star)
            if impl == "kit":
                rel = "1.0x (kit)"
            elif impl == "floor":
                rel = f"kit = {_fmt_ratio(1 / t['ratio_to_kit'])} floor"
            else:
                rel = f"kit {_fmt_ratio(t['ratio_to_kit'])} faster"
            rows.append([task, t["label"], f"{t['n_images']}{star}", f"{t['ms_per_image']:.3f}",
                         f"{t['cpu_ms_per_image']:.3f}", rel])
    out += _table(rows, ["task", "implementation", "images", "ms/image", "cpu ms", "vs kit"],
                  "<<>>><")
    if note:
        out.append(f"  * timed on the first {cfg['cellpose_images']} (cellpose) or "
                   f"{rd['notebook_images']} (score_rle notebook) images only (same cell-type "
                   "mix); its ratio is against the kit on those same images")
    out.append("  score_rle notebook: timed only (painting loses overlapping masks, so its "
               "scores differ by design)")
    out += ["", "Targets"]
    fmt = {"over_floor": lambda x: f"{x:.2f}x", "max_ms": lambda x: f"{x:.3f} ms"}
    rows = [[t["name"], fmt.get(t["kind"], _fmt_ratio)(t["measured"]),
             "PASS" if t["passed"] else "FAIL"] for t in res["targets"]]
    out += _table(rows, ["target", "measured", "result"], "<><")
    out += ["", f"python -m kit.cv on the {rd['n_images']} score_rle images (GT file vs the "
            f"perturbed copy as id,predicted; a subprocess, start-up included): "
            f"{rd['kit_cv_wall_s']:.2f} s wall"]
    pk = res["kit_peak_memory_mb"]
    out += ["", "Kit peak memory (tracemalloc, most crowded image): " +
            ", ".join(f"{k} {v:.1f} MB" for k, v in pk.items()),
            f"Checks: {'all passed' if res['all_checks_passed'] else 'FAILED'}; "
            f"wall time {res['wall_s']:.0f} s"]
    return out


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
