"""The demo's figure: accuracy vs cost and accuracy vs measured time (MSDNet's budgeted-batch plot)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Dict, List, Sequence, Union


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError as err:  # pragma: no cover - matplotlib is a requirement of the command line
        raise ModuleNotFoundError("the plot needs matplotlib (pip install matplotlib)") from err
    return plt, ticker


def log_ticks(values: Sequence[float]) -> Sequence[float]:
    """The mantissas of a log axis' labelled ticks for data spanning ``values``: 1 per decade over more
    than 3 decades, 1-2-5 over more than 1.2, finer below; few enough that plain labels do not meet."""
    lo, hi = min(values), max(values)
    span = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    if span > 3:
        return (1.0,)
    if span > 1.2:
        return (1.0, 2.0, 5.0)
    return (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)


def plain_log_axis(ax, values: Sequence[float]) -> None:
    """A log x axis with plain tick labels ("0.2", "5", "10": no powers of ten, no labelled minor
    ticks, which overlap over the one or two decades of the demo's figures)."""
    _, ticker = _matplotlib()
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=log_ticks(values)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def cost_note(results: List[Dict[str, object]]) -> str:
    """The caption under the cost panel: why an exit's marker can sit right of the full network's
    star, with each model's figure (from its costs: what a sample leaving at the last exit pays vs the
    full network, which runs the last classifier only)."""
    parts = []
    for r in results:
        costs = r["costs"]
        last, full = costs["actual"][-1], costs["full"]
        if last > full * (1 + 1e-9):
            what = " (MSDNet's classifiers are two convolutions each)" if str(r["model"]).startswith("msdnet") else ""
            n = len(costs["actual"]) - 1
            earlier = "earlier classifier adds" if n == 1 else f"{n} earlier classifiers add"
            parts.append(f"{r['model']}'s last exit costs {last / full:.2f}x the full network: its "
                         f"{earlier} {(last - full) / 1e6:.3g} MFLOPs{what}")
    return ("x: a sample that leaves at that exit, having run every stage and every exit's classifier up to it; "
            "star: the full network, every stage and the last classifier only. Each classifier a sample passes "
            "adds its own cost, so an exit can cost more than the full network"
            + (": " + "; ".join(parts) if parts else "") + ".")


def budget_figure(results: List[Dict[str, object]], device: str = "cpu"):
    """The matplotlib figure of :func:`budget_plot` (the caller closes it)."""
    plt, _ = _matplotlib()
    fig, (ax_cost, ax_time) = plt.subplots(1, 2, figsize=(11, 4.6))
    cost_values, time_values = [], []
    for i, r in enumerate(results):
        color = f"C{i}"
        pts = sorted(r["points"], key=lambda p: p["test"]["cost_mflops"])
        acc = [100 * p["test"]["accuracy"] for p in pts]
        point_costs = [p["test"]["cost_mflops"] for p in pts]
        exit_costs = [c / 1e6 for c in r["costs"]["actual"]]
        ax_cost.plot(point_costs, acc, "o-", color=color, label=f"{r['model']} early exit")
        ax_cost.plot(exit_costs, [100 * a for a in r["test_exit_accuracy"]], "x", color=color, ms=8,
                     label=f"{r['model']} each exit alone")
        full_acc = 100 * r["test_exit_accuracy"][-1]
        ax_cost.plot([r["costs"]["full"] / 1e6], [full_acc], "*", color=color, ms=14,
                     label=f"{r['model']} full network")
        cost_values += point_costs + exit_costs + [r["costs"]["full"] / 1e6]
        per_sample = 1.0 / r["samples_timed"]
        infer_ms = [p["timing"]["fused"]["infer_ms"] * per_sample for p in pts]
        ax_time.plot(infer_ms, acc, "o-", color=color, label=f"{r['model']} infer (fused)")
        full_ms = r["timing"]["fused"]["full_ms"] * per_sample
        ax_time.plot([full_ms], [full_acc], "*", color=color, ms=14, label=f"{r['model']} full network (fused)")
        time_values += infer_ms + [full_ms]
        if "reference" in r["timing"]:
            ref_ms = [p["timing"]["reference"]["infer_ms"] * per_sample for p in pts]
            ax_time.plot(ref_ms, acc, "s--", color=color, alpha=0.5, label=f"{r['model']} infer (reference)")
            time_values += ref_ms
    ax_cost.set(xlabel="mean MFLOPs per sample (multiply-adds)", ylabel="test accuracy (%)",
                title="accuracy vs cost")
    ax_time.set(xlabel=f"measured ms per sample ({device}, one batch of the test split)", ylabel="test accuracy (%)",
                title="accuracy vs wall-clock")
    for ax, values in ((ax_cost, cost_values), (ax_time, time_values)):
        plain_log_axis(ax, [v for v in values if v > 0] or [1.0])
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.12, which="minor")
        ax.legend(fontsize=7, loc="lower right")
    note = textwrap.fill(cost_note(results), 150)
    fig.text(0.01, 0.01, note, fontsize=7.5, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.027 * (note.count("\n") + 1) + 0.015, 1, 1))
    return fig


def budget_plot(results: List[Dict[str, object]], path: Union[str, Path], device: str = "cpu") -> None:
    """Writes a PNG of two panels for each model of ``results`` (the demo's per-model records):
    test accuracy vs mean MFLOPs per sample, and vs measured ms per sample of fused ``infer`` on
    ``device``, for every operating point, with each single exit and the full network marked, and a
    caption on why an exit alone can cost more than the full network (:func:`cost_note`)."""
    plt, _ = _matplotlib()
    fig = budget_figure(results, device)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
