"""Markdown table of an early-exit benchmark JSON (test_bench_branchynet.py, test_bench_msdnet.py).

usage: python benchmarks/report_early_exit.py RESULTS.json
Speedup = full / infer (medians, same run); cost ratio = full cost / expected cost, where the
expected cost weighs what a sample leaving at exit k pays (stages and exits 1..k) by the measured
exit fractions. Target: speedup >= 0.85 x cost ratio. Where the JSON has an interleaved entry
(rounds running the three contenders in turn), its speedup is reported too. The race entries
(eexit against the reference model eager and under torch.compile) get a table of their own.
"""
import sys
from typing import List

from reporting import NAN, groups, header, load, row, table_head

RACE = ["full ref", "full ref channels_last", "full torch.compile", "full fused", "infer fused", "infer eexit.compile"]


def race_table(races: List[dict]) -> None:
    """The race entries (early_exit_common.race_stock): interleaved medians and the targets' ratios."""
    print("\nAgainst the stock options (interleaved rounds, medians in ms; best full = the fastest of the "
          "reference model eager contiguous, channels_last and under torch.compile):\n")
    print(table_head(["device", "model", "batch", *RACE, "fused full / torch.compile", "cost ratio",
                      "infer fused speedup over best full", "/ cost ratio", "infer eexit.compile / cost ratio",
                      "warm-up s (torch.compile, eexit.compile)"], "llr" + "r" * (len(RACE) + 7)))
    for e in races:
        ms = {k: v * 1e3 for k, v in e["median_s"].items()}
        expected = sum(f * c for f, c in zip(e["exit_fractions"], e["exit_costs"]))
        ratio = e["full_cost"] / expected
        best = min(ms["full ref"], ms["full ref channels_last"], ms["full torch.compile"])
        print(row([e["device"], e["model"], e["batch"], *(f"{ms[k]:.1f}" for k in RACE),
                   f"{ms['full torch.compile'] / ms['full fused']:.2f}", f"{ratio:.2f}",
                   f"{best / ms['infer fused']:.2f}", f"{best / ms['infer fused'] / ratio:.2f}",
                   f"{best / ms['infer eexit.compile'] / ratio:.2f}",
                   f"{e['torch_compile_s']:.0f}, {e['eexit_compile_s']:.0f}"]))


def main(path: str) -> None:
    data = load(path)
    races = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["impl"] == "race"]
    data = dict(data, benchmarks=[b for b in data["benchmarks"] if b["extra_info"]["impl"] != "race"])
    by_model = groups(data, lambda e: (e["device"], e["model"], e["batch"]))
    print(header(data, "early-exit", any(k[0] == "cuda" for k in by_model)))
    if by_model:
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
    if races:
        race_table(races)


if __name__ == "__main__":
    main(sys.argv[1])
