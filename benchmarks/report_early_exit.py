"""Markdown table of an early-exit benchmark JSON (test_bench_branchynet.py, test_bench_msdnet.py).

usage: python benchmarks/report_early_exit.py RESULTS.json
Speedup = full / infer (medians, same run); cost ratio = full cost / expected cost, where the
expected cost weighs what a sample leaving at exit k pays (stages and exits 1..k) by the measured
exit fractions. Target: speedup >= 0.85 x cost ratio. Where the JSON has an interleaved entry
(rounds running the three contenders in turn), its speedup is reported too.
"""
import sys

from reporting import NAN, groups, header, load, row, table_head


def main(path: str) -> None:
    data = load(path)
    by_model = groups(data, lambda e: (e["device"], e["model"], e["batch"]))
    print(header(data, "early-exit", any(k[0] == "cuda" for k in by_model)))
    print("\nBatch 1 rows time 32 samples one after the other. Medians in ms.\n")
    print(table_head(["device", "model", "batch", "exit fractions (measured)", "infer ms", "full ms", "simulate ms",
                      "speedup", "cost ratio", "speedup / cost ratio", "interleaved speedup",
                      "interleaved speedup / cost ratio", "paper speedup"], "llrl" + "r" * 9))
    for (dev, model, batch), g in sorted(by_model.items()):
        info = {k: v for e in g.info.values() for k, v in e.items()}  # the contenders' extra_info, merged
        fr = info.get("exit_fractions", [])
        expected = sum(f * c for f, c in zip(fr, info["exit_costs"]))
        ratio = info["full_cost"] / expected if expected else NAN
        speedup, i_speedup = g.ratio("full", "infer"), g.interleaved_ratio("full", "infer")
        paper = info.get("paper_speedup")
        print(row([dev, model, batch, " / ".join(f"{100 * f:.1f}" for f in fr),
                   *(f"{g.median[impl] * 1e3:.2f}" for impl in ("infer", "full", "simulate")),
                   f"{speedup:.2f}", f"{ratio:.2f}", f"{speedup / ratio:.2f}", f"{i_speedup:.2f}",
                   f"{i_speedup / ratio:.2f}", "" if paper is None else f"{paper}x (batch 1)"]))


if __name__ == "__main__":
    main(sys.argv[1])
