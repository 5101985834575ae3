"""The demo's figure: plain, non-overlapping tick labels on its log axes, and a caption on why an
exit alone can cost more than the full network, checked against eexit.flops."""
import functools

import pytest

from eexit import flops
from eexit.app import zoo
from eexit.app.evaluation import model_costs
from eexit.app.plot import budget_figure, budget_plot, cost_note

pytest.importorskip("matplotlib")


@functools.lru_cache(maxsize=None)
def costs_of(name: str):
    return model_costs(zoo.build(name, 10), zoo.entry(name).input_shape)


def record(name: str, ms_full: float, samples: int = 360):
    """A demo record of ``name`` with its real costs and made-up accuracies and timings in the demo's ranges."""
    costs = costs_of(name)
    k = len(costs.actual)
    points = []
    for i, frac in enumerate((0.3, 0.45, 0.6, 0.8, 1.0)):
        cost = costs.actual[0] + frac * (costs.actual[-1] - costs.actual[0])
        points.append(dict(name=f"budget {i}", test=dict(accuracy=0.8 + 0.03 * i, cost_mflops=cost / 1e6),
                           timing={b: dict(infer_ms=ms_full * (0.4 + 0.2 * i) * s)
                                   for b, s in (("fused", 1.0), ("reference", 2.5))}))
    return dict(model=name, costs=costs._asdict(), test_exit_accuracy=[0.7 + 0.05 * j for j in range(k)],
                points=points, samples_timed=samples,
                timing={b: dict(full_ms=ms_full * s) for b, s in (("fused", 1.0), ("reference", 2.5))})


def overlaps(boxes):
    boxes = sorted(boxes, key=lambda b: b.x0)
    return [(a, b) for a, b in zip(boxes, boxes[1:]) if b.x0 < a.x1]


@pytest.mark.parametrize("ms_full", [20.0, 2.0, 300.0])  # narrow and wide ranges of ms per sample
def test_log_axes_have_plain_labels_that_do_not_overlap(ms_full, tmp_path):
    import matplotlib.pyplot as plt

    results = [record("msdnet-digits", ms_full), record("b-lenet", ms_full / 8)]
    fig = budget_figure(results)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            labels = [t for t, loc in zip(ax.get_xticklabels(), ax.get_xticks())
                      if lo <= loc <= hi and t.get_text()]
            assert len(labels) >= 2, [t.get_text() for t in labels]
            for t in labels:
                assert "$" not in t.get_text() and "^" not in t.get_text(), t.get_text()  # no 10^k mathtext
                float(t.get_text())  # plain numbers
            assert not overlaps([t.get_window_extent(renderer) for t in labels]), [t.get_text() for t in labels]
            assert not any(t.get_text() for t in ax.xaxis.get_minorticklabels()), "no labelled minor ticks"
    finally:
        plt.close(fig)
    budget_plot(results, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_the_caption_says_why_exits_sit_right_of_the_full_network():
    results = [record("msdnet-digits", 20.0), record("b-lenet", 2.0)]
    note = cost_note(results)
    assert "an exit can cost more than the full network" in note
    assert "Each classifier a sample passes adds its own cost" in note
    # the claim, against eexit.flops: msdnet-digits' classifiers cost about as much as its stages, so a
    # sample leaving at the last exit pays more than the full network (every stage, last classifier only)
    model = zoo.build("msdnet-digits", 10)
    stages, heads = flops.stage_costs(model, (3, 32, 32))
    assert min(heads) > 0.5 * (sum(stages) / len(stages))
    actual, full = flops.actual_exit_costs(model, (3, 32, 32)), sum(stages) + heads[-1]
    assert actual[-1] > full and actual[-2] > full
    assert f"msdnet-digits's last exit costs {actual[-1] / full:.2f}x the full network" in note
    assert f"its 3 earlier classifiers add {sum(heads[:-1]) / 1e6:.3g} MFLOPs" in note
    lenet = results[1]["costs"]
    assert "b-lenet's last exit" in note and lenet["actual"][-1] > lenet["full"]
    fig = budget_figure(results)
    try:
        assert any("more than the full network" in t.get_text() for t in fig.texts), "the caption is on the figure"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
