"""The files of ``python -m kit.report``: ``report.md``, ``report.json``, ``report_map.png`` and
``figures/best_worst.png`` (TP/FP/FN outlines of the best and worst held-out image per cell
type of the best row). Every file is written to a temp file and renamed.

Rows are (model, as trained | tuned on the validation split) pairs scored on the held-out
fold; "best" rows are named after the fact for the reader (targets, figures): the held-out
scores choose nothing that is shipped or tuned.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit import CELL_TYPES, metric
from kit.nested import HeldOutScores

__all__ = ["Row", "write_report", "targets", "fmt_number", "ERROR_COLUMNS", "ENSEMBLE", "ENSEMBLE_TTA"]

ENSEMBLE, ENSEMBLE_TTA = "ensemble", "ensemble_tta"   # the report's ensemble folders (rows)

ERROR_COLUMNS = (("fn_merged", "FN merged"), ("fn_split", "FN split"), ("fn_missed", "FN missed"),
                 ("fn_outline", "FN outline"), ("fn_small", "FN small"), ("fn_large", "FN large"),
                 ("fp_merge", "FP merge"), ("fp_piece", "FP piece"),
                 ("fp_spurious", "FP spurious"), ("fp_outline", "FP outline"))


@dataclass
class Row:
    """One line of the table: a model folder's held-out scores as trained or tuned."""
    name: str
    model: str                    # the model folder's name under OUT/models
    tuned: bool
    scores: HeldOutScores
    train_seconds: float | None   # kit.train wall (ensembles: the members' sum)
    n_train_images: int

    @property
    def summary(self) -> metric.Summary:
        return self.scores.summary

    def type_map(self, ct: str) -> float | None:
        s = self.summary.by_cell_type.get(ct)
        return None if s is None else s.map

    def as_dict(self) -> dict:
        s = self.summary
        return {
            "name": self.name, "model": self.model, "tuned": self.tuned,
            "map": s.map, "ap": [float(a) for a in s.ap], "ap50": float(s.ap[0]),
            "n_images": s.n_images,
            "by_cell_type": {ct: {"map": t.map, "ap": [float(a) for a in t.ap],
                                  "n_images": t.n_images} for ct, t in s.by_cell_type.items()},
            "errors_by_cell_type": {ct: e.as_dict()
                                    for ct, e in self.scores.errors_by_cell_type().items()},
            "train_minutes": None if self.train_seconds is None else self.train_seconds / 60,
            "train_seconds_per_image": (None if self.train_seconds is None
                                        else self.train_seconds / max(self.n_train_images, 1)),
            "infer_seconds_per_image": self.scores.seconds_per_image(),
            "params": self.scores.params,
        }


def fmt_number(x, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; ``-`` for None (a table cell)."""
    return "-" if x is None else f"{x:.{digits}f}"


def _cell_types(rows) -> list[str]:
    return [ct for ct in CELL_TYPES if any(ct in r.summary.by_cell_type for r in rows)]


def score_table(rows, cell_types) -> str:
    """Markdown: MAP overall and per cell type, AP@0.5, training and inference cost."""
    head = ["model", "MAP", *cell_types, "AP@0.5", "kit.train min", "train s/img", "infer s/img"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        d = r.as_dict()
        lines.append("| " + " | ".join([r.name, fmt_number(d["map"]),
                                        *[fmt_number(r.type_map(ct)) for ct in cell_types],
                                        fmt_number(d["ap50"]), fmt_number(d["train_minutes"], 1),
                                        fmt_number(d["train_seconds_per_image"], 1),
                                        fmt_number(d["infer_seconds_per_image"], 2)]) + " |")
    return "\n".join(lines)


def ap_table(rows) -> str:
    """Markdown: AP at every IoU threshold per row."""
    head = ["model"] + [f"{t:.2f}" for t in metric.THRESHOLDS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(metric.THRESHOLDS)]
    for r in rows:
        lines.append("| " + " | ".join([r.name] + [f"{a:.3f}" for a in r.summary.ap]) + " |")
    return "\n".join(lines)


def error_table(rows, cell_types) -> str:
    """Markdown: per tuned row and cell type, each FN / FP cause as a share of the FN / FP."""
    head = ["model", "cell type", "GT", "pred", "TP@0.5"] + [label for _, label in ERROR_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        if not r.tuned:
            continue
        by_type = r.scores.errors_by_cell_type()
        for ct in cell_types:
            if ct not in by_type:
                continue
            e = by_type[ct]
            cells = []
            for key, _ in ERROR_COLUMNS:
                total = e.fn if key.startswith("fn") else e.fp
                cells.append(f"{getattr(e, key) / total:.0%}" if total else "-")
            lines.append("| " + " | ".join([r.name, ct, str(e.n_gt), str(e.n_pred), str(e.tp), *cells]) + " |")
    return "\n".join(lines)


def targets(rows) -> list[dict]:
    """The benchmark's targets, each ``{"target", "value", "met"}`` (held-out numbers)."""
    by = {r.name: r for r in rows}
    singles = [r for r in rows if r.tuned and r.model not in ("baseline", ENSEMBLE, ENSEMBLE_TTA)]
    ensembles = [r for r in rows if r.tuned and r.model in (ENSEMBLE, ENSEMBLE_TTA)]
    out = []
    base = by.get("baseline tuned")
    if base is not None:
        for r in singles:
            worse = [ct for ct in base.summary.by_cell_type
                     if (r.type_map(ct) or 0.0) <= (base.type_map(ct) or 0.0)]
            out.append({"target": f"{r.name} beats the re-fit baseline on every cell type",
                        "value": "yes" if not worse else f"not on {', '.join(worse)}", "met": not worse})
    if singles:
        best = max(singles, key=lambda r: r.summary.map)
        out.append({"target": "best single model MAP >= 0.20", "value": f"{best.name} {best.summary.map:.3f}",
                    "met": best.summary.map >= 0.20})
        astro = best.type_map("astro")
        if astro is not None:
            out.append({"target": "astro MAP of the best single model >= 0.09",
                        "value": f"{astro:.3f}", "met": astro >= 0.09})
        if ensembles:
            ens = max(ensembles, key=lambda r: r.summary.map)
            out.append({"target": "ensemble MAP >= 0.23 and above its best member",
                        "value": f"{ens.name} {ens.summary.map:.3f} vs {best.name} {best.summary.map:.3f}",
                        "met": ens.summary.map >= 0.23 and ens.summary.map > best.summary.map})
    return out


def _gains(rows) -> list[str]:
    """Lines: what nested tuning and TTA changed on the held-out fold."""
    by = {r.name: r for r in rows}
    lines = []
    for r in rows:
        if r.tuned and r.model in by:
            b, a = by[r.model].summary.map, r.summary.map
            lines.append(f"- {r.model}: tuning on the validation split changed the held-out MAP "
                         f"{b:.3f} -> {a:.3f} ({a - b:+.3f})")
    if f"{ENSEMBLE} tuned" in by and f"{ENSEMBLE_TTA} tuned" in by:
        b, a = by[f"{ENSEMBLE} tuned"].summary.map, by[f"{ENSEMBLE_TTA} tuned"].summary.map
        lines.append(f"- TTA (tuned ensembles): {b:.3f} -> {a:.3f} ({a - b:+.3f})")
    return lines


def bar_chart(rows, cell_types, path: Path) -> Path:
    """Grouped bars: per row, the held-out MAP overall and per cell type (PNG)."""
    from kit.overlay import png_bytes, pyplot
    from kit.atomic import write_atomic

    plt = pyplot()
    keys = ["all", *cell_types]
    width = 0.8 / len(keys)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(rows) + 2), 4.5), dpi=100)
    for k, key in enumerate(keys):
        vals = [r.summary.map if key == "all" else (r.type_map(key) or 0.0) for r in rows]
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, vals, width, label=key)
    ax.set_xticks(x, [r.name.replace(" ", "\n") for r in rows], fontsize=8)
    ax.set_ylabel("held-out MAP (IoU 0.50-0.95)")
    ax.set_title("Held-out fold: as trained and tuned on the validation split")
    ax.legend(fontsize=8, ncols=len(keys))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return write_atomic(path, png_bytes(fig))


def best_worst_figure(plan, row: Row, held_out, path: Path) -> tuple[Path, list]:
    """TP/FP/FN outlines of the best and worst held-out image per cell type of ``row``."""
    from kit.nested import predictions
    from kit.overlay import make_overlay, save_grid

    by_id = {r.id: r for r in held_out}
    chosen = []
    for ct in _cell_types([row]):
        scores = sorted((s for s in row.scores.scores if s.cell_type == ct), key=lambda s: (s.score, s.id))
        chosen += [scores[-1].id, scores[0].id]
    preds = predictions(plan.out / "cache" / row.model / "held_out", chosen, row.scores.params)
    overlays = [make_overlay(by_id[i].load_image(), by_id[i].rles, preds[i], id=i,
                             cell_type=by_id[i].cell_type) for i in chosen]
    title = f"{row.name}: best (left) and worst (right) held-out image per cell type"
    return save_grid(overlays, path, ncols=2, title=title), chosen


def training_line(trained: dict) -> str:
    """Markdown: each model's kit.train wall and CPU threads, and whether this run trained it."""
    def one(model: str, info: dict) -> str:
        minutes = "?" if info.get("seconds") is None else f"{info['seconds'] / 60:.1f} min"
        threads = info.get("threads")
        cores = "" if threads is None else f", {threads} CPU thread{'s' if threads != 1 else ''}"
        return f"{model} {minutes}{cores}{' (reused: an earlier run trained it)' if info.get('reused') else ''}"

    return ("Training (kit.train wall): " + "; ".join(one(m, i) for m, i in trained.items())
            + ". Models trained side by side share the cores; one that trains alone gets them all, "
              "so a rerun that retrains one model gives it more threads than a run that trains all.")


def write_report(plan, rows, tuning: dict, trained: dict, val_ids, held_out, say) -> dict:
    """Write every report file (module docstring); returns the report document."""
    from kit.atomic import atomic_open

    cell_types = _cell_types(rows)
    out = plan.out
    chart = bar_chart(rows, cell_types, out / "report_map.png")
    best = max((r for r in rows if r.tuned), key=lambda r: r.summary.map)
    figure, shown = best_worst_figure(plan, best, held_out, out / "figures" / "best_worst.png")
    goal = targets(rows)
    n_val = len(val_ids)
    own_oof = {}
    for m in plan.models:
        path = out / "models" / m / "oof_score.json"
        if path.is_file():
            own_oof[m] = json.loads(path.read_text())["map"]
    selection = (f"The held-out fold {plan.held_out} ({len(held_out)} images) chose nothing. The "
                 f"validation split ({n_val} images of the training folds, the same for every "
                 f"model, in each model's val.csv) chose the Mask R-CNN epoch and every tuned "
                 f"parameter (post-processing, fusion); the models trained on the rest.")
    doc = {"data": str(plan.data), "folds": str(plan.folds), "held_out_fold": plan.held_out,
           "n_held_out": len(held_out), "n_validation": n_val,
           "models": list(plan.models), "members": list(plan.members), "tta": list(plan.tta),
           "configs": {m: str(p) for m, p in plan.configs.items()}, "budgets_minutes": plan.budgets,
           "selection": selection, "training": trained, "tuning": tuning,
           "rows": [r.as_dict() for r in rows], "targets": goal, "kit_train_oof_map": own_oof,
           "files": {"chart": str(chart), "figure": str(figure), "figure_ids": shown}}
    lines = [f"# Held-out report: fold {plan.held_out} of {plan.folds.name}", "",
             f"Data: `{plan.data}`; {len(held_out)} held-out images; validation split {n_val} images.",
             "", selection, "", score_table(rows, cell_types), "",
             training_line(trained), "",
             "Rows render every held-out image with its true cell type. kit.train's own "
             "out-of-fold MAP uses the model's cell-type rule (Mask R-CNN's `cell_type: vote`: "
             "the majority class of its detections): "
             + ", ".join(f"{m} {v:.3f}" for m, v in own_oof.items()) + ".", "",
             "AP per IoU threshold:", "", ap_table(rows), "",
             "What tuning and TTA changed (held-out numbers; chosen on the validation split):", "",
             *_gains(rows), "", "Targets:", "",
             *[f"- [{'x' if t['met'] else ' '}] {t['target']}: {t['value']}" for t in goal], "",
             "Errors of the tuned rows at IoU > 0.5 (share of each row's FN / FP; "
             "kit.error_analysis defines the causes):", "", error_table(rows, cell_types), "",
             f"![held-out MAP]({chart.name})", "",
             f"Best and worst held-out image per cell type of {best.name} (TP green, FP red, FN blue):",
             "", f"![best and worst](figures/{figure.name})", ""]
    with atomic_open(out / "report.json") as f:
        json.dump(doc, f, indent=1, allow_nan=False, default=str)
    with atomic_open(out / "report.md") as f:
        f.write("\n".join(lines))
    say(f"wrote {out / 'report.md'}, report.json, {chart.name}, figures/{figure.name}")
    return doc
