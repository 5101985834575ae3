"""The demo's figure: accuracy vs cost and accuracy vs measured time (MSDNet's budgeted-batch plot)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union


def budget_plot(results: List[Dict[str, object]], path: Union[str, Path]) -> None:
    """Writes a PNG of two panels for each model of ``results`` (the demo's per-model records):
    test accuracy vs mean MFLOPs per sample, and vs measured ms per sample of fused ``infer``, for
    every operating point, with each single exit and the full network marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is a requirement of the command line
        raise ModuleNotFoundError("the plot needs matplotlib (pip install matplotlib)") from err
    fig, (ax_cost, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(results):
        color = f"C{i}"
        pts = sorted(r["points"], key=lambda p: p["test"]["cost_mflops"])
        acc = [100 * p["test"]["accuracy"] for p in pts]
        ax_cost.plot([p["test"]["cost_mflops"] for p in pts], acc, "o-", color=color, label=f"{r['model']} early exit")
        ax_cost.plot([c / 1e6 for c in r["costs"]["actual"]], [100 * a for a in r["test_exit_accuracy"]], "x",
                     color=color, ms=8, label=f"{r['model']} each exit alone")
        full_acc = 100 * r["test_exit_accuracy"][-1]
        ax_cost.plot([r["costs"]["full"] / 1e6], [full_acc], "*", color=color, ms=14,
                     label=f"{r['model']} full network")
        per_sample = 1.0 / r["samples_timed"]
        ax_time.plot([p["timing"]["fused"]["infer_ms"] * per_sample for p in pts], acc, "o-", color=color,
                     label=f"{r['model']} infer (fused)")
        ax_time.plot([r["timing"]["fused"]["full_ms"] * per_sample], [full_acc], "*", color=color, ms=14,
                     label=f"{r['model']} full network (fused)")
        if "reference" in r["timing"]:
            ax_time.plot([p["timing"]["reference"]["infer_ms"] * per_sample for p in pts], acc, "s--", color=color,
                         alpha=0.5, label=f"{r['model']} infer (reference)")
    ax_cost.set(xlabel="mean MFLOPs per sample (multiply-adds)", ylabel="test accuracy (%)",
                title="accuracy vs cost", xscale="log")
    ax_time.set(xlabel="measured ms per sample (CPU, one batch of the test split)", ylabel="test accuracy (%)",
                title="accuracy vs wall-clock", xscale="log")
    for ax in (ax_cost, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
