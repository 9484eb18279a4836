"""Paper-style reports: Tables 1-4 (+ the eComMMMU per-task Table 5) with models side by side, CSV, a plot.

`results` everywhere is {model label: {benchmark: metrics}} as `ecomvlm eval` writes to results.json, so tables
of several runs can be rebuilt later (`ecomvlm eval --merge results.json ...`).

Table 3 has one row per model and item-intelligence inference strategy, as the paper's rows 28/29/40/41: the
model's ``item_intel`` result (all images) as "model", ``item_intel:primary`` as "model *primary image only*",
``item_intel:pan_scan`` as "model *pan&scan*", ``item_intel:crops`` as "model *image crops*"; Table 4 likewise.

Table 4 follows the paper's measurement: per-example latency (warm: model load and one warm-up batch excluded;
JSON re-generations included) and throughput (examples/s at the configured batch or concurrency), each with the
backend and hardware it was measured on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (column title, benchmark, metric); titles follow the paper
TABLES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "table1": ("Table 1: e-commerce tasks", [
        ("Aspect General", "aspect_general", "accuracy"), ("Aspect Fashion", "aspect_fashion", "accuracy"),
        ("Aspect Fashion + T&C", "aspect_fashion_tc", "accuracy"), ("Apparel", "fashion_apparel", "accuracy"),
        ("Sneakers & Handbags", "fashion_sneakers_handbags", "accuracy"), ("DAE (F1)", "dae", "f1")]),
    "table2": ("Table 2: public multimodal benchmarks", [
        ("MMBench (dev)", "mmbench", "accuracy"), ("MME (Perc.)", "mme", "perception"),
        ("MME (Cogn.)", "mme", "cognition"), ("MMStar", "mmstar", "average"), ("CVBench", "cv_bench", "accuracy"),
        ("TextVQA (val)", "textvqa", "accuracy"), ("AI2D", "ai2d", "accuracy"), ("MMMU (val)", "mmmu", "accuracy"),
        ("eComMMMU (test)", "ecommmmu", "average")]),
    "table3": ("Table 3: multi-image item intelligence", [
        ("f1-score", "item_intel", "f1"), ("precision", "item_intel", "precision"),
        ("recall", "item_intel", "recall"), ("verifiable-correct", "item_intel", "verifiable_correct"),
        ("verifiable-incorrect (lower is better)", "item_intel", "verifiable_incorrect"),
        ("unverifiable (lower is better)", "item_intel", "unverifiable")]),
}
ECOMMMMU_COLS = ["AP", "BQA", "CP", "SR", "MPC", "PSI", "SA", "PRP"]
# full scale of each bounded metric (a panel of zeros still shows its 0-100 axis); the rest scale to their data
BOUNDS = {("mme", "perception"): 2000.0, ("mme", "cognition"): 800.0}
UNBOUNDED = {"sec_per_example", "examples_per_s"}
TIMING_PANELS = [("Table 4: sec/example (item_intel)", "item_intel", "sec_per_example"),
                 ("Table 4: examples/s (item_intel)", "item_intel", "examples_per_s")]


# item-intelligence result keys in row order (paper: primary image only, all images, pan&scan, image crops)
ITEM_INTEL_ROWS = [("item_intel:primary", "primary image only"), ("item_intel", ""),
                   ("item_intel:pan_scan", "pan&scan"), ("item_intel:crops", "image crops")]


def item_intel_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(row label, metrics) of every model x item-intelligence strategy present, in the paper's row order."""
    rows = []
    for model, res in results.items():
        for key, name in ITEM_INTEL_ROWS:
            if key in res:
                rows.append((f"{model} *{name}*" if name else model, res[key]))
    return rows


def _has_item_intel(results: dict[str, dict[str, Any]]) -> bool:
    return any(k in r for r in results.values() for k, _ in ITEM_INTEL_ROWS)


def _cell(res: dict[str, Any], bench: str, metric: str) -> str:
    v = res.get(bench, {}).get(metric)
    return "-" if v is None else f"{v:.1f}"


def _sec(res: dict[str, Any], benches: set[str]) -> str:
    secs = [m["sec_per_example"] for b, m in res.items() if b in benches and "sec_per_example" in m]
    return f"{sum(secs) / len(secs):.3f}" if secs else "-"


def tables_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Every table that has at least one benchmark in `results`, models as rows (+ sec/example, Table 4)."""
    out = []
    for key, (title, cols) in TABLES.items():
        if key == "table3":
            if _has_item_intel(results):
                out.append(f"**{title}** (the *italic* names the inference strategy, as in the paper)\n")
                out.append("| model | " + " | ".join(c for c, _, _ in cols) + " | sec/example |")
                out.append("|" + "---|" * (len(cols) + 2))
                for name, m in item_intel_rows(results):
                    cells = " | ".join(_cell({"item_intel": m}, b, mt) for _, b, mt in cols)
                    sec = f"{m['sec_per_example']:.3f}" if "sec_per_example" in m else "-"
                    out.append(f"| {name} | {cells} | {sec} |")
                out.append("")
            continue
        benches = {b for _, b, _ in cols}
        if not any(b in r for r in results.values() for b in benches):
            continue
        used = [c for c in cols if any(c[1] in r for r in results.values())]
        out.append(f"**{title}**\n")
        out.append("| model | " + " | ".join(c for c, _, _ in used) + " | sec/example |")
        out.append("|" + "---|" * (len(used) + 2))
        for model, res in results.items():
            cells = " | ".join(_cell(res, b, m) for _, b, m in used)
            out.append(f"| {model} | {cells} | {_sec(res, benches)} |")
        out.append("")
    if _has_item_intel(results):
        out.append("**Table 4: item-intelligence inference efficiency** (warm per-example latency incl. JSON "
                   "re-generation; throughput at the configured batch/concurrency)\n")
        out.append("| model | backend | hardware | sec/example (lower is better) | examples/s (batch) | f1-score |")
        out.append("|---|---|---|---|---|---|")
        for model, m in item_intel_rows(results):
            if m:
                t = m.get("timing", {})
                eps = m.get("examples_per_s")
                thr = "-" if eps is None else f"{eps:.3g}" + (f" ({t['batch']})" if t.get("batch") else "")
                warm = "" if t.get("warm", True) else " (cold)"
                out.append(f"| {model} | {t.get('backend', '-')} | {t.get('hardware', '-')} | "
                           f"{m['sec_per_example']:.3g}{warm} | {thr} | {m['f1']:.1f} |")
        out.append("")
    if any("ecommmmu" in r for r in results.values()):
        out.append("**eComMMMU per task (Table 5; SR = Recall@1, Avg. weighted by samples)**\n")
        out.append("| model | setting | " + " | ".join(ECOMMMMU_COLS) + " | Avg. |")
        out.append("|" + "---|" * (len(ECOMMMMU_COLS) + 3))
        for model, res in results.items():
            m = res.get("ecommmmu")
            if m:
                cells = [f"{m['per_task'][c]:.1f}" if c in m["per_task"] else "-" for c in ECOMMMMU_COLS]
                st = m.get("data", {}).get("setting")
                setting = f"{st['subset']}, images={st['images']}, <= {st['max_images']}" if st else "-"
                out.append(f"| {model} | {setting} | " + " | ".join(cells) + f" | {m['average']:.1f} |")
        out.append("")
    return "\n".join(out)


def tables_csv(results: dict[str, dict[str, Any]]) -> str:
    """One row per model, one column per (table, column) present; empty where a benchmark was not run."""
    cols = [(t, c, b, m) for t, (_, spec) in TABLES.items() for c, b, m in spec
            if any(b in r for r in results.values())]
    cols += [("table4", c.split(": ", 1)[1], b, m) for c, b, m in TIMING_PANELS
             if any(r.get(b, {}).get(m) is not None for r in results.values())]
    for key, name in ITEM_INTEL_ROWS:  # the other inference strategies: their own Table-3 columns
        if name and any(key in r for r in results.values()):
            cols += [("table3", f"{c} [{name}]", key, m) for c, _, m in TABLES["table3"][1]]
    rows = ["model," + ",".join(f'"{t}: {c}"' for t, c, _, _ in cols)]
    for model, res in results.items():
        vals = [res.get(b, {}).get(m) for _, _, b, m in cols]
        rows.append(f'"{model}",' + ",".join("" if v is None else f"{v:.4f}" for v in vals))
    return "\n".join(rows) + "\n"


def panel_axis(bench: str, metric: str, values: list[float | None]) -> tuple[float, float, bool]:
    """(ymin, ymax, log scale) of one panel: bounded metrics on their full scale (0-100, MME 0-2000 / 0-800) so
    an all-zero panel is readable; unbounded ones (timings) on their data, log-scaled when they span more than
    two orders of magnitude."""
    if metric not in UNBOUNDED:
        return 0.0, BOUNDS.get((bench, metric), 100.0) * 1.15, False
    pos = [v for v in values if v is not None and v > 0]
    if not pos:
        return 0.0, 1.0, False
    if max(pos) / min(pos) > 100:
        return min(pos) / 2, max(pos) * 4, True
    return 0.0, max(pos) * 1.18, False


def _label(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if metric in UNBOUNDED else f"{v:.1f}"


def plot(results: dict[str, dict[str, Any]], path: str | Path) -> Path | None:
    """One small bar chart per reported column, each on its own axis (`panel_axis`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(c, b, m) for _, spec in TABLES.values() for c, b, m in spec if any(b in r for r in results.values())]
    cols += [(c, b, m) for c, b, m in TIMING_PANELS
             if any(r.get(b, {}).get(m) is not None for r in results.values())]
    cols += [(f"f1-score [{name}]", key, "f1") for key, name in ITEM_INTEL_ROWS
             if name and any(key in r for r in results.values())]
    if not cols:
        return None
    n = len(cols)
    ncol = min(4, n)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    models = list(results)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, bench, metric) in zip(axes.flat, cols):
        vals = [results[m].get(bench, {}).get(metric) for m in models]
        lo, hi, log = panel_axis(bench, metric, vals)
        if log:
            ax.set_yscale("log")
        base = lo if log else 0.0
        heights = [(v if v is not None and (v > 0 or not log) else base) - base for v in vals]
        ax.bar(range(len(models)), heights, bottom=base, color=[colors[i % len(colors)] for i in range(len(models))])
        for i, v in enumerate(vals):
            ax.text(i, base + heights[i], _label(metric, v), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(lo, hi)
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
