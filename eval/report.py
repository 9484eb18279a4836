"""Paper-style reports: Tables 1-4 (+ the eComMMMU per-task Table 5) with models side by side, CSV, a plot.

`results` everywhere is {model label: {benchmark: metrics}} as `ecomvlm eval` writes to results.json, so tables
of several runs can be rebuilt later (`ecomvlm eval --report-only results.json ...`).
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


def _cell(res: dict[str, Any], bench: str, metric: str) -> str:
    v = res.get(bench, {}).get(metric)
    return "-" if v is None else f"{v:.1f}"


def _sec(res: dict[str, Any], benches: set[str]) -> str:
    secs = [m["sec_per_example"] for b, m in res.items() if b in benches and "sec_per_example" in m]
    return f"{sum(secs) / len(secs):.3f}" if secs else "-"


def tables_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Every table that has at least one benchmark in `results`, models as rows (+ sec/example, Table 4)."""
    out = []
    for title, cols in TABLES.values():
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
    if any("item_intel" in r for r in results.values()):
        out.append("**Table 4: item-intelligence inference efficiency**\n")
        out.append("| model | sec/example (lower is better) | f1-score |")
        out.append("|---|---|---|")
        for model, res in results.items():
            m = res.get("item_intel")
            if m:
                out.append(f"| {model} | {m['sec_per_example']:.3f} | {m['f1']:.1f} |")
        out.append("")
    if any("ecommmmu" in r for r in results.values()):
        out.append("**eComMMMU per task (Table 5; SR = Recall@1, Avg. weighted by samples)**\n")
        out.append("| model | " + " | ".join(ECOMMMMU_COLS) + " | Avg. |")
        out.append("|" + "---|" * (len(ECOMMMMU_COLS) + 2))
        for model, res in results.items():
            m = res.get("ecommmmu")
            if m:
                cells = [f"{m['per_task'][c]:.1f}" if c in m["per_task"] else "-" for c in ECOMMMMU_COLS]
                out.append(f"| {model} | " + " | ".join(cells) + f" | {m['average']:.1f} |")
        out.append("")
    return "\n".join(out)


def tables_csv(results: dict[str, dict[str, Any]]) -> str:
    """One row per model, one column per (table, column) present; empty where a benchmark was not run."""
    cols = [(t, c, b, m) for t, (_, spec) in TABLES.items() for c, b, m in spec
            if any(b in r for r in results.values())]
    rows = ["model," + ",".join(f'"{t}: {c}"' for t, c, _, _ in cols)]
    for model, res in results.items():
        vals = [res.get(b, {}).get(m) for _, _, b, m in cols]
        rows.append(f'"{model}",' + ",".join("" if v is None else f"{v:.4f}" for v in vals))
    return "\n".join(rows) + "\n"


def plot(results: dict[str, dict[str, Any]], path: str | Path) -> Path | None:
    """One small bar chart per reported column (each on its own scale: MME is 0-2000, the rest 0-100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(c, b, m) for _, spec in TABLES.values() for c, b, m in spec if any(b in r for r in results.values())]
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
        ax.bar(range(len(models)), [v or 0 for v in vals], color=[colors[i % len(colors)] for i in range(len(models))])
        for i, v in enumerate(vals):
            ax.text(i, (v or 0), "-" if v is None else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, max([v or 0 for v in vals] + [1e-9]) * 1.18 or 1)  # room for the value labels
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
