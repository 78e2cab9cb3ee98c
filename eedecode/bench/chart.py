"""The bar chart of a benchmark's speed table (``eedecode bench`` draws it as ``speedups.png``): each
method's speed-up over HF ``generate`` and over eedecode autoregressive, the bar at the median and
the error bar spanning the lowest and highest run (none for a single run, which the title says)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .methods import display_name

PANELS = (("speedup_vs_hf", "speed-up over HF generate"), ("speedup_vs_ar", "speed-up over eedecode AR"))


def unavailable() -> str | None:
    """Why the chart cannot be drawn here (matplotlib missing), or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return 'matplotlib is not installed; pip install "eedecode[plot]"'
    return None


def bar_data(record: dict, key: str) -> tuple[list[str], list[float], list[tuple[float, float]]]:
    """Labels, medians and ``(below, above)`` error-bar lengths of the results that have ``key``
    (a label gets its batch size when the record has several)."""
    several = len({r["batch_size"] for r in record["results"]}) > 1
    labels, values, errors = [], [], []
    for r in record["results"]:
        if r.get(key) is None:
            continue
        runs = r.get(key + "_runs") or [r[key]]
        label = display_name(r["method"])
        labels.append(f"{label} (batch {r['batch_size']})" if several else label)
        values.append(r[key])
        errors.append((max(r[key] - min(runs), 0.0), max(max(runs) - r[key], 0.0)))
    return labels, values, errors


def plot_speedups(record: dict, path: str | Path, title: str = "") -> Path:
    """Two panels of horizontal bars, speed-up over HF generate and over eedecode autoregressive,
    one bar per row of the table, error bars over runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["settings"].get("repeats", 1)
    n = len(record["results"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * n + 1.6), sharey=False)
    for ax, (key, name) in zip(axes, PANELS, strict=True):
        labels, values, errors = bar_data(record, key)
        ys = list(range(len(labels)))[::-1]
        err = [[e[0] for e in errors], [e[1] for e in errors]]
        ax.barh(ys, values, xerr=err if runs > 1 else None, capsize=3, color="tab:blue", alpha=0.8)
        for y, v, e in zip(ys, values, errors, strict=True):  # the label past the error bar
            ax.text(v + (e[1] if runs > 1 else 0.0), y, f" {v:.2f}×", va="center", fontsize=7)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_xlabel(name + (" (paired median)" if runs == 1 else " (median, range over runs)"))
        ax.grid(axis="x", alpha=0.3)
    note = f"median and range over {runs} runs" if runs > 1 else "1 run: no range"
    fig.suptitle(f"{title or 'speed-ups'} ({note})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
