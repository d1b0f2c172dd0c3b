"""Memory of reading a LIVECell-scale COCO json: ``kit.data.read_coco`` against its peers.

Run: ``python -m benchmarks.coco_read [--json ../shared/data/livecell/livecell_coco_test.json]
[--copies 60] [--json-out OUT]``.

LIVECell's train json holds about a million polygon annotations (~26 points each). The
benchmark writes a json of that kind at a smaller scale: the real annotations of ``--json``
(default: the LIVECell sample's test GT, 15 images, 3,285 cells) repeated ``--copies`` times
under new image and annotation ids (``annotations`` a list: pycocotools' ``COCO`` does not take
LIVECell's dict of annotations, ``read_coco`` takes both). Each reader
then runs alone in a fresh interpreter (imports done first), which reports the growth of its
peak resident set (``VmHWM`` - ``VmRSS`` before the read) and of its resident set after the
read (what stays held), and the seconds:

- ``json.load``: the standard library's parse, the first step of any reader;
- ``pycocotools COCO``: ``COCO(path)``, the loader a competitor reaches for (parse + index);
- ``kit.data.read_coco``: parse with annotations compacted as they are decoded
  (:mod:`kit.coco_json`), then one Kaggle RLE string per annotation (what training holds).

Printed: MB and KB per annotation of each, the ratio of each peer's peak growth to
``read_coco``'s, and the peak extrapolated to 1 M annotations (LIVECell train).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.memory import REPO

DEFAULT_JSON = REPO.parent / "shared" / "data" / "livecell" / "livecell_coco_test.json"
LIVECELL_TRAIN_ANNOTATIONS = 1_000_000

READERS = {
    "json.load": "import json\ndef read(p):\n    with open(p, 'rb') as f:\n        return json.load(f)\n",
    "pycocotools COCO": ("import contextlib, io\nfrom pycocotools.coco import COCO\n"
                         "def read(p):\n    with contextlib.redirect_stdout(io.StringIO()):\n"
                         "        return COCO(str(p))\n"),
    "kit.data.read_coco": "from kit.data import read_coco\ndef read(p):\n    return read_coco(p)\n",
}

# Runs in the child: imports (numpy, pycocotools, kit) before the baseline, then one read.
CHILD = """
import json, sys, time
import numpy, pycocotools.mask
from kit.runlog import memory_mb
{reader}
before = memory_mb()["rss_mb"]
t0 = time.perf_counter()
result = read(sys.argv[1])
seconds = time.perf_counter() - t0
after = memory_mb()
print(json.dumps({{"peak_mb": after["peak_rss_mb"] - before, "held_mb": after["rss_mb"] - before,
                  "seconds": seconds}}))
"""


def replicated_json(source: Path, copies: int, out: Path) -> int:
    """Write ``source``'s images and annotations ``copies`` times under new ids to ``out``
    (annotations as a list); the number of annotations."""
    doc = json.loads(source.read_text())
    anns = doc["annotations"]
    anns = list(anns.values()) if isinstance(anns, dict) else anns
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    images, annotations, next_image, next_ann = [], [], 1, 1
    for copy in range(copies):
        for img in doc["images"]:
            images.append(dict(img, id=next_image, file_name=f"c{copy}_{img['file_name']}"))
            for a in by_image.get(img["id"], []):
                annotations.append(dict(a, id=next_ann, image_id=next_image))
                next_ann += 1
            next_image += 1
    out.write_text(json.dumps({**doc, "images": images, "annotations": annotations}))
    return len(annotations)


def measure(reader: str, path: Path) -> dict:
    """Peak and held MB and seconds of one reader on ``path``, in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", CHILD.format(reader=READERS[reader]), str(path)],
                          cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        raise SystemExit(f"{reader} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coco_read", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="COCO json whose annotations are repeated")
    parser.add_argument("--copies", type=int, default=60, help="times its images are repeated")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.json.is_file():
        print(f"error: --json {args.json}: file not found", file=sys.stderr)
        return 2
    if args.copies < 1:
        print(f"error: --copies must be >= 1, got {args.copies}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kit-bench-coco-") as tmp:
        path = Path(tmp) / "livecell_like.json"
        n = replicated_json(args.json, args.copies, path)
        size_mb = path.stat().st_size / 2**20
        print(f"load average {os.getloadavg()[0]:.2f}; {n} annotations ({args.copies} copies of "
              f"{args.json.name}), {size_mb:.0f} MB of json", flush=True)
        results = {reader: measure(reader, path) for reader in READERS}
    ours = results["kit.data.read_coco"]["peak_mb"]
    print("\n| reader | peak MB | KB / annotation | held after, MB | seconds | peak vs read_coco "
          f"| peak at {LIVECELL_TRAIN_ANNOTATIONS // 1000}k annotations |\n|---|---:|---:|---:|---:|---:|---:|")
    for reader, r in results.items():
        per = r["peak_mb"] * 1024 / n
        print(f"| {reader} | {r['peak_mb']:.0f} | {per:.2f} | {r['held_mb']:.0f} | {r['seconds']:.1f} | "
              f"{r['peak_mb'] / ours:.2f}x | {per * LIVECELL_TRAIN_ANNOTATIONS / 2**20:.1f} GB |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"annotations": n, "json_mb": size_mb, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
