"""Plots of an agreement study (matplotlib, Agg backend): agreement per layer with both lenses (its
bootstrap interval as a band), the oracle-exit histogram, the gates' trade-off curves, the
confidence categories, the sub-layer points and the ideal speed-up heatmap over (exit layer,
draft length). Presentation only.
"""

from __future__ import annotations

from pathlib import Path

from .measures import CATEGORIES
from .sublayers import POINT_NAMES, POINTS

_STYLE = {"logit": "-", "tuned": "--"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_all(result: dict, out: Path) -> list[Path]:
    """Every plot the result has data for; returns the files written."""
    try:
        _pyplot()
    except ImportError:  # plots are optional: pip install "eedecode[plot]"
        return []
    title = result["model"]["name"] or result["model"]["architecture"]
    paths = [
        agreement_plot(result, out / "agreement.png", title),
        oracle_plot(result, out / "oracle_exit.png", title),
        gates_plot(result, out / "gates.png", title),
        categories_plot(result, out / "categories.png", title),
    ]
    if (result.get("sublayers") or {}).get("rows"):
        paths.append(sublayers_plot(result["sublayers"]["rows"], out / "sublayers.png", title))
    if any("ideal_speedup" in r for rows in result["speed"]["tables"].values() for r in rows):
        paths.append(speedup_plot(result, out / "speedup.png", title))
    return paths


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def agreement_plot(result: dict, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, (ax, kl) = plt.subplots(1, 2, figsize=(11, 4))
    for lens, res in result["lenses"].items():
        d = [r["depth"] for r in res["layers"]]
        ls = _STYLE.get(lens, ":")
        ax.plot(
            d,
            [r["agreement"] for r in res["layers"]],
            ls,
            color="C0",
            marker="o",
            label=f"top-1 = final ({lens})",
        )
        cis = [r.get("agreement_ci") or [None, None] for r in res["layers"]]
        if all(c[0] is not None for c in cis):  # the bootstrap interval over blocks
            ax.fill_between(d, [c[0] for c in cis], [c[1] for c in cis], color="C0", alpha=0.2, lw=0)
        ax.plot(
            d, [r["top5_overlap"] for r in res["layers"]], ls, color="C1", label=f"top-5 overlap ({lens})"
        )
        ax.plot(
            d, [r["accuracy"] for r in res["layers"]], ls, color="C2", label=f"top-1 = next token ({lens})"
        )
        copies = [r.get("copies_input", float("nan")) for r in res["layers"]]
        ax.plot(d, copies, ls, color="C7", label=f"top-1 = input token ({lens})")
        kl.plot(
            d, [max(r["kl"], 1e-6) for r in res["layers"]], ls, color="C3", marker="o", label=f"KL ({lens})"
        )
        kl.plot(d, [r["entropy"] for r in res["layers"]], ls, color="C4", label=f"entropy ({lens})")
    ax.set(xlabel="exit depth (layers run)", ylabel="share of tokens", ylim=(0, 1.02), title=title)
    kl.set(
        xlabel="exit depth (layers run)", ylabel="nats", yscale="log", title="KL to the final layer; entropy"
    )
    ax.legend(fontsize=7)
    kl.legend(fontsize=7)
    return _save(fig, path)


def oracle_plot(result: dict, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    lenses = list(result["lenses"])
    width = 0.8 / len(lenses)
    for i, lens in enumerate(lenses):
        hist = result["lenses"][lens]["oracle"]["histogram"]
        xs = [h["depth"] + (i - (len(lenses) - 1) / 2) * width for h in hist]
        ax.bar(xs, [h["share"] for h in hist], width=width, label=f"{lens} lens")
    ax.set(xlabel="oracle exit depth", ylabel="share of tokens", title=f"{title}: oracle exit (saturation)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def gates_plot(result: dict, path: Path, title: str) -> Path:
    plt = _pyplot()
    lenses = list(result["lenses"])
    fig, axes = plt.subplots(1, len(lenses), figsize=(6 * len(lenses), 4.2), squeeze=False)
    for ax, lens in zip(axes[0], lenses, strict=True):
        res = result["lenses"][lens]
        for name, gate in res["gates"].items():
            c = gate["curve"]
            ax.plot([p["mean_depth"] for p in c], [p["agreement"] for p in c], marker=".", label=name)
        s = res["static"]["curve"]
        ax.plot([p["mean_depth"] for p in s], [p["agreement"] for p in s], "k--", label="static exit")
        ax.plot([res["oracle"]["mean_depth"]], [1.0], "k*", markersize=12, label="oracle")
        ax.set(
            xlabel="mean exit depth",
            ylabel="agreement with the final layer",
            title=f"{title}: gates, {lens} lens",
        )
        ax.legend(fontsize=7)
    return _save(fig, path)


def categories_plot(result: dict, path: Path, title: str) -> Path:
    plt = _pyplot()
    lenses = list(result["lenses"])
    fig, axes = plt.subplots(1, len(lenses), figsize=(6 * len(lenses), 4), squeeze=False)
    for ax, lens in zip(axes[0], lenses, strict=True):
        c = result["lenses"][lens]["categories"]
        for cat in CATEGORIES:
            ax.plot(result["depths"], c[cat]["p_final"], marker="o", label=f"{cat} ({c[cat]['share']:.1%})")
        ax.set(
            xlabel="exit depth",
            ylabel="mean p(final top-1)",
            ylim=(0, 1),
            title=f"{title}: categories, {lens} lens",
        )
        ax.legend(fontsize=8)
    return _save(fig, path)


def sublayers_plot(rows: list[dict], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, (agree, stable) = plt.subplots(1, 2, figsize=(11, 4))
    for i, point in enumerate(POINTS):
        pts = [r for r in rows if r["point"] == point]
        d = [r["depth"] for r in pts]
        agree.plot(d, [r["agree"] for r in pts], marker="o", color=f"C{i}", label=POINT_NAMES[point])
        stable.plot(d, [r["top10_prev"] for r in pts], marker="o", color=f"C{i}", label=POINT_NAMES[point])
    agree.set(xlabel="layer", ylabel="top-1 = final", ylim=(0, 1.02), title=f"{title}: sub-layers")
    stable.set(xlabel="layer", ylabel="top-10 overlap with the previous layer's", ylim=(0, 1.02))
    agree.legend(fontsize=7)
    return _save(fig, path)


def speedup_plot(result: dict, path: Path, title: str) -> Path:
    plt = _pyplot()
    tables = {k: v for k, v in result["speed"]["tables"].items() if v}
    exits, ks = result["speed"]["exit_layers"], result["speed"]["draft_lengths"]
    fig, axes = plt.subplots(
        1, len(tables), figsize=(5.5 * len(tables), 0.45 * len(exits) + 2), squeeze=False
    )
    values = [r["ideal_speedup"] for rows in tables.values() for r in rows]
    from matplotlib.colors import TwoSlopeNorm

    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(min(values), 0.99), vmax=max(max(values), 1.01))  # red: slower
    for ax, (lens, rows) in zip(axes[0], tables.items(), strict=True):
        grid = [
            [
                next(r["ideal_speedup"] for r in rows if r["exit_layer"] == e and r["draft_length"] == k)
                for k in ks
            ]
            for e in exits
        ]
        im = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_yticks(range(len(exits)), [str(e) for e in exits])
        ax.set(xlabel="draft length k", ylabel="exit layer E", title=f"{title}: ideal speed-up, {lens} lens")
        fig.colorbar(im, ax=ax)
    return _save(fig, path)
