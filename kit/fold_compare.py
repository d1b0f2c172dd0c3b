"""The fold ensemble against the single fold models it is made of, on a fold none of them saw
(``python -m kit.train_folds ... --held-out K``): one table, one JSON, one bar chart.

Inputs are score documents as ``kit.train`` writes them (``oof_score.json`` keys: ``map``,
``ap`` (10 thresholds), ``by_cell_type`` {type: {map, ...}}, ``per_image`` [{id, score}]) plus
``seconds_per_image``; every document scores the same images. Files are written to a temp file
and renamed (:mod:`kit.atomic`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit import CELL_TYPES
from kit.report_files import fmt_number

__all__ = ["compare", "write_comparison"]

MEAN_ROW = "mean of the fold models"
TIE = 1e-9   # per-image score differences below this are ties (float sums of the mean)


def compare(docs: dict[str, dict], ensemble: str, fold: int) -> dict:
    """``docs``: {row name: score document}, ``ensemble`` one of its names, the others single
    models. Returns the rows (MAP, AP@0.5, MAP per cell type, seconds per image), the mean of
    the single models, and the paired per-image view: on how many images the ensemble beats
    the single models' mean, and its MAP gain over the best and the mean single model.
    ValueError when the documents do not score the same images."""
    if ensemble not in docs or len(docs) < 2:
        raise ValueError(f"compare needs the ensemble {ensemble!r} and at least one single model")
    ids = {name: [p["id"] for p in d["per_image"]] for name, d in docs.items()}
    first = ids[ensemble]
    for name, got in ids.items():
        if sorted(got) != sorted(first):
            raise ValueError(f"{name} and {ensemble} were scored on different images")
    types = [ct for ct in CELL_TYPES if any(ct in d["by_cell_type"] for d in docs.values())]

    def row(name, d):
        return {"name": name, "map": d["map"], "ap50": d["ap"][0],
                "by_cell_type": {ct: d["by_cell_type"][ct]["map"] for ct in types if ct in d["by_cell_type"]},
                "seconds_per_image": d.get("seconds_per_image")}

    rows = [row(n, d) for n, d in docs.items()]
    singles = [r for r in rows if r["name"] != ensemble]
    mean = {"name": MEAN_ROW, "map": float(np.mean([r["map"] for r in singles])),
            "ap50": float(np.mean([r["ap50"] for r in singles])),
            "by_cell_type": {ct: float(np.mean([r["by_cell_type"][ct] for r in singles]))
                             for ct in types if all(ct in r["by_cell_type"] for r in singles)},
            "seconds_per_image": None}
    per_image = {n: {p["id"]: p["score"] for p in d["per_image"]} for n, d in docs.items()}
    single_names = [r["name"] for r in singles]
    ens_scores = np.array([per_image[ensemble][i] for i in first])
    mean_scores = np.array([np.mean([per_image[n][i] for n in single_names]) for i in first])
    best = max(singles, key=lambda r: r["map"])
    ens_row = next(r for r in rows if r["name"] == ensemble)
    return {
        "held_out_fold": fold, "n_images": len(first), "cell_types": types,
        "ensemble": ensemble, "rows": rows + [mean],
        "gain_over_best_single": ens_row["map"] - best["map"],
        "best_single": best["name"],
        "gain_over_mean_single": float(ens_scores.mean() - mean_scores.mean()),
        "images_ensemble_above_mean": int((ens_scores > mean_scores + TIE).sum()),
        "images_ensemble_below_mean": int((ens_scores < mean_scores - TIE).sum()),
    }


def table(result: dict) -> str:
    """Markdown table of :func:`compare`'s rows and the paired summary below it."""
    types = result["cell_types"]
    head = ["model", "MAP", *types, "AP@0.5", "s / image"]
    lines = [f"Held-out fold {result['held_out_fold']} ({result['n_images']} images, seen by no model):", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in result["rows"]:
        lines.append("| " + " | ".join([r["name"], fmt_number(r["map"]),
                                        *[fmt_number(r["by_cell_type"].get(ct)) for ct in types],
                                        fmt_number(r["ap50"]), fmt_number(r["seconds_per_image"], 2)]) + " |")
    lines += ["", f"{result['ensemble']}: {result['gain_over_mean_single']:+.4f} MAP over the mean fold "
                  f"model, {result['gain_over_best_single']:+.4f} over the best ({result['best_single']}); "
                  f"above the fold models' mean on {result['images_ensemble_above_mean']} of "
                  f"{result['n_images']} images, below on {result['images_ensemble_below_mean']}."]
    return "\n".join(lines)


def bar_chart(result: dict, path: Path) -> Path:
    """Grouped bars per row: MAP overall and per cell type (PNG)."""
    from kit.atomic import write_atomic
    from kit.overlay import png_bytes, pyplot

    plt = pyplot()
    rows, keys = result["rows"], ["all", *result["cell_types"]]
    width = 0.8 / len(keys)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(rows) + 2), 4.2), dpi=100)
    for k, key in enumerate(keys):
        vals = [r["map"] if key == "all" else r["by_cell_type"].get(key, 0.0) for r in rows]
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, vals, width, label=key)
    ax.set_xticks(x, [r["name"].replace(" model", "\nmodel").replace(" of the", "\nof the") for r in rows],
                  fontsize=8)
    ax.set_ylabel("MAP (IoU 0.50-0.95)")
    ax.set_title(f"Held-out fold {result['held_out_fold']}: fold ensemble vs its fold models")
    ax.legend(fontsize=8, ncols=len(keys))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return write_atomic(path, png_bytes(fig))


def write_comparison(result: dict, json_path: Path) -> str:
    """Write ``json_path`` and, beside it, the same name with ``.md`` (the table) and ``.png``
    (the bar chart); return the table."""
    from kit.atomic import write_atomic

    json_path = Path(json_path)
    text = table(result)
    write_atomic(json_path, (json.dumps(result, indent=1, allow_nan=False) + "\n").encode())
    write_atomic(json_path.with_suffix(".md"), (text + "\n").encode())
    bar_chart(result, json_path.with_suffix(".png"))
    return text
