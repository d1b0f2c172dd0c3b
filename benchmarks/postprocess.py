"""Post-processing benchmark: kit.postprocess vs torchvision's ``paste_masks_in_image`` path.

Run: ``python -m benchmarks.postprocess [--n 1000] [--repeat 5] [--json OUT]``.

Both sides get the same ``--n`` synthetic detections on a 520x704 image (seeded: shsy5y-like
boxes 10-40 px over the whole image, 28x28 soft blob masks with noise, uniform scores) and
produce a non-overlapping label image:

* ``kit``: :func:`kit.postprocess.paint` -- every detection pasted (score threshold 0, no NMS,
  pixel threshold 0.5, no area limits: the worst case, all N survive), one box-sized window at
  a time straight into the label image; also the full :func:`kit.postprocess.postprocess`
  with the seed's shsy5y thresholds (score filter + box NMS first).
* ``torchvision``: ``paste_masks_in_image(masks, boxes, (H, W))`` (what torchvision's Mask
  R-CNN does in ``transform.postprocess``: an N x 1 x H x W float tensor), then the usual
  notebook painting: threshold 0.5 and paint in score order keeping earlier pixels.

Time: ``time.perf_counter``, best of ``--repeat`` (after one warm-up). Memory: peak resident
set size above the resident size just before the call (``VmHWM - VmRSS`` from
``/proc/self/status``, the high-water mark reset through ``/proc/self/clear_refs``), which
counts numpy, OpenCV and torch CPU allocations alike but not memory the allocator already holds
from earlier calls (so small working sets can show 0); plus ``tracemalloc``'s peak (Python and
numpy allocations only: torch's CPU allocator is invisible to it). Targets for the kit: <= 0.3 s
and <= 200 MB for 1000 detections. The load average is printed: the machine is shared.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc

import numpy as np

TARGET_SECONDS = 0.3
TARGET_MB = 200.0


def make_detections(n: int, shape=(520, 704), seed: int = 0):
    """Seeded synthetic detections (see module doc) as a :class:`kit.postprocess.Detections`."""
    from kit.postprocess import Detections

    rng = np.random.default_rng(seed)
    h, w = shape
    cx, cy, s = rng.uniform(0, w, n), rng.uniform(0, h, n), rng.uniform(10, 40, n)
    asp = rng.uniform(0.7, 1.4, n)
    boxes = np.stack([cx - s * asp / 2, cy - s / asp / 2, cx + s * asp / 2, cy + s / asp / 2], 1)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    yy, xx = np.mgrid[0:28, 0:28]
    blob = np.exp(-((yy - 13.5) ** 2 + (xx - 13.5) ** 2) / (2 * 8.0 ** 2))
    masks = np.clip(blob[None] * rng.uniform(0.7, 1.3, (n, 1, 1)) + rng.normal(0, 0.05, (n, 28, 28)), 0, 1)
    return Detections(boxes, rng.random(n), rng.integers(0, 3, n), masks, shape)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn, repeat: int) -> dict:
    """Best time of ``repeat`` calls (after a warm-up) and the peak memory of one more call."""
    fn()
    times = []
    gc.disable()
    try:
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    finally:
        gc.enable()
    gc.collect()
    exact = _reset_peak()
    before = _status_kb("VmRSS")
    tracemalloc.start()
    fn()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _status_kb("VmHWM")
    return {"seconds": min(times), "seconds_all": times,
            "peak_rss_mb": (peak - before) / 1024.0 if exact else None,  # None: not measurable
            "tracemalloc_mb": traced / 2 ** 20}


def torchvision_path(dets, order, pixel: float = 0.5):
    """Label image the torchvision way: full-size paste of every mask, then paint in order."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    with torch.no_grad():
        pasted = paste_masks_in_image(torch.from_numpy(dets.masks[order])[:, None],
                                      torch.from_numpy(dets.boxes[order]), dets.image_shape)
        binary = pasted[:, 0] >= pixel
        del pasted
        labels = torch.zeros(dets.image_shape, dtype=torch.int32)
        for i in range(len(binary)):
            new = binary[i] & (labels == 0)
            labels[new] = i + 1
    return labels.numpy()


def run(n: int, repeat: int, seed: int = 0) -> dict:
    import torch

    from kit import metric
    from kit.postprocess import DEFAULT_CONFIG, TypeParams, paint, postprocess

    dets = make_detections(n, seed=seed)
    order = np.argsort(-dets.scores, kind="stable")
    loose = TypeParams(score=0.0, nms=1.0, pixel=0.5, min_area=0, max_area=10 ** 9)
    boxes, masks = dets.boxes[order], dets.masks[order]
    torch.set_num_threads(1)
    res = {
        "n_detections": n,
        "kit_all": measure(lambda: paint(boxes, masks, dets.image_shape, loose), repeat),
        "kit_shsy5y_defaults": measure(lambda: postprocess(dets, "shsy5y", DEFAULT_CONFIG), repeat),
        "torchvision_paste_and_paint": measure(lambda: torchvision_path(dets, order), max(1, repeat // 2)),
    }
    kit_labels = paint(boxes, masks, dets.image_shape, loose)
    tv_labels = torchvision_path(dets, order)
    fg_k, fg_t = kit_labels > 0, tv_labels > 0
    res["agreement"] = {
        "foreground_iou": float((fg_k & fg_t).sum() / max((fg_k | fg_t).sum(), 1)),
        "metric_kit_vs_torchvision": float(metric.image_score(tv_labels, kit_labels).score),
        "instances_kit": int(len(np.unique(kit_labels)) - 1),
        "instances_torchvision": int(len(np.unique(tv_labels)) - 1),
    }
    res["full_res_tensor_mb"] = n * dets.image_shape[0] * dets.image_shape[1] * 4 / 2 ** 20
    res["load_average"] = os.getloadavg()
    k = res["kit_all"]
    res["targets"] = {"seconds": TARGET_SECONDS, "mb": TARGET_MB,
                      "pass": bool(k["seconds"] <= TARGET_SECONDS and k["peak_rss_mb"] is not None
                                   and k["peak_rss_mb"] <= TARGET_MB)}
    return res


def format_table(res: dict) -> str:
    lines = [f"{res['n_detections']} detections -> 520x704 label image "
             f"(load average {', '.join(f'{v:.1f}' for v in res['load_average'])})",
             f"{'method':<34}{'seconds':>9}{'peak RSS MB':>13}{'tracemalloc MB':>16}"]
    names = {"kit_all": "kit.postprocess (all pasted)",
             "kit_shsy5y_defaults": "kit.postprocess (shsy5y defaults)",
             "torchvision_paste_and_paint": "torchvision paste_masks + paint"}
    for key, name in names.items():
        m = res[key]
        rss = "n/a" if m["peak_rss_mb"] is None else f"{m['peak_rss_mb']:.1f}"
        lines.append(f"{name:<34}{m['seconds']:>9.3f}{rss:>13}{m['tracemalloc_mb']:>16.1f}")
    a = res["agreement"]
    t = res["targets"]
    lines.append(f"targets for kit (all pasted): <= {t['seconds']} s, <= {t['mb']:.0f} MB: "
                 f"{'PASS' if t['pass'] else 'FAIL'}")
    lines.append(f"speed-up {res['torchvision_paste_and_paint']['seconds'] / res['kit_all']['seconds']:.0f}x; "
                 f"torchvision's N x H x W float tensor alone: {res['full_res_tensor_mb']:.0f} MB")
    lines.append(f"agreement (different paste rules: detectron2's vs torchvision's): foreground IoU "
                 f"{a['foreground_iou']:.3f}, kit.metric score of one against the other "
                 f"{a['metric_kit_vs_torchvision']:.3f}, instances {a['instances_kit']} vs "
                 f"{a['instances_torchvision']}")
    return "\n".join(lines)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postprocess",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="detections")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per method (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        print(f"error: --n and --repeat must be >= 1, got {args.n}, {args.repeat}", file=sys.stderr)
        return 2
    if args.json:
        from kit.atomic import check_writable

        check_writable(args.json, "--json output")  # before the timed runs
    res = run(args.n, args.repeat, args.seed)
    print(format_table(res))
    if args.json:
        from kit.atomic import atomic_open

        with atomic_open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["targets"]["pass"] else 1


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
