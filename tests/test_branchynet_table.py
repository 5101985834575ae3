"""benchmarks/branchynet_table.py on a tiny random IDX set: the table's rows, and every figure
consistent with the others (exit shares, cost ratios, speedups, the validation rule of T)."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import branchynet_table as bt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "app"))
from datafiles import write_idx_set  # noqa: E402
from helpers import generator, new_seed  # noqa: E402


def test_table_on_tiny_data(tmp_path, capsys, one_thread):
    write_idx_set(tmp_path / "idx", generator(new_seed()), 5200, 120)
    rc = bt.main(["--data", "mnist", "--data-dir", str(tmp_path / "idx"), "--train-size", "200", "--epochs", "1",
                  "--reps", "1", "--batch1-samples", "3", "--json", str(tmp_path / "t.json"), "--out",
                  str(tmp_path / "t.md"), "--work-dir", str(tmp_path / "work")])
    assert rc == 0 and (tmp_path / "work" / "b-lenet.pt").is_file()
    res = json.loads((tmp_path / "t.json").read_text())
    text = (tmp_path / "t.md").read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    assert [r["name"] for r in res["rows"]] == ["chosen", "60% at branch", "90% at branch"]
    assert res["n_test"] == 120 and res["n_val"] == 5000 and res["batch1_samples"] == 3
    full, exit_costs = res["full_mflops"], res["exit_mflops"]
    for r in res["rows"]:
        assert sum(r["exit_counts"]) == 120 and r["exit_percent"] == pytest.approx(100 * r["exit_counts"][0] / 120)
        expected = (r["exit_counts"][0] * exit_costs[0] + r["exit_counts"][1] * exit_costs[1]) / 120
        assert r["cost_ratio"] == pytest.approx(full / expected, rel=1e-6)
        assert r["cost_mflops"] == pytest.approx(expected, rel=1e-6)
        for b in ("256", "1"):
            ms = r[f"batch{b}_ms"]
            assert ms["full"] > 0 and r[f"speedup{b}"] == pytest.approx(ms["full"] / ms["infer"])
        # real early exit answers what the cached logits say (same rule, same samples)
        assert r["infer_accuracy"] == pytest.approx(r["simulated_accuracy"], abs=1 / 120)
        assert f"{r['exit_percent']:.1f}" in text
    shares = [r["exit_percent"] for r in res["rows"][1:]]
    assert abs(shares[0] - 60) <= 15 and abs(shares[1] - 90) <= 10  # test shares near the validation ones
    assert len(res["targets"]) == 3 and all(("met" in t) or ("MISSED" in t) for t in res["targets"])
    assert "paper, MNIST: 0.025 | 94.3" in text and "as recalled: check the paper" in text
    assert set(res["parts"]["batch 256"]) == set(res["parts"]["batch 1"]) == set(res["part_flops"])
    assert res["threads"] == 1 and res["cpu"] in text.splitlines()[0]
    for batch, r in res["branch_vs_stage0"].items():
        ms, fl = res["parts"][batch], res["part_flops"]
        assert r["wall"] == pytest.approx(ms["exit 0 (branch)"] / ms["stage 0"])
        assert r["wall_per_flop"] == pytest.approx(r["wall"] * fl["stage 0"] / fl["exit 0 (branch)"])
        assert f"Branch / stage 0 at {batch}: wall {r['wall']:.2f}x" in text
    ms, fl = res["parts"]["batch 256"]["stage 1"], res["part_flops"]["stage 1"]
    assert f"| stage 1 | {fl / 1e6:.3f} | {ms:.3f} | {1e3 * ms / 256:.2f} | {256 * fl / 1e6 / ms:.1f} |" in text


def test_choose_thresholds_rule():
    """The chosen T is the largest whose early-exit accuracy stays within 0.5 points of the final exit."""
    gen = generator(new_seed())
    n = 400
    labels = torch.randint(0, 10, (n,), generator=gen)
    logits = torch.randn(2, n, 10, generator=gen) * torch.rand(1, n, 1, generator=gen) * 6
    logits[1, torch.arange(n), labels] += 4  # the final exit is mostly right
    chosen = bt.choose_thresholds(logits, labels)
    entropy = bt.gate_scores(logits[0], "entropy")
    correct = logits.argmax(2) == labels
    final = correct[1].double().mean().item()

    def accuracy(t):
        return torch.where(entropy < t, correct[0], correct[1]).double().mean().item()

    assert accuracy(chosen["chosen"]) >= final - 0.005
    top = [entropy.max().item() + 1] if chosen["chosen"] <= entropy.max().item() else []
    for t in entropy[entropy >= chosen["chosen"]].unique().tolist()[1:] + top:
        assert accuracy(t) < final - 0.005, t  # every larger T lets more samples out and breaks the rule
    assert abs((entropy < chosen["60% at branch"]).double().mean().item() - 0.6) < 0.01


def test_missing_data_is_one_line(tmp_path, capsys):
    assert bt.main(["--data", "mnist", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("branchynet_table: error: MNIST folder") and str(tmp_path / "nowhere") in err
    assert len(err.strip().splitlines()) == 1


def test_work_dir_in_the_repository_is_refused(tmp_path, capsys):
    repo = os.path.join(os.path.dirname(__file__), "..")
    assert bt.main(["--data-dir", str(tmp_path), "--work-dir", os.path.join(repo, "benchmarks", "w")]) == 2
    err = capsys.readouterr().err
    assert "inside the repository" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(repo, "benchmarks", "w"))
