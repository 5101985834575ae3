"""Turn a pytest-benchmark JSON file into the markdown results table.

usage: python benchmarks/report.py RESULTS.json > benchmarks/results/exit_gate-<device>-<date>.md
Ratios are eager/fused and compile/fused medians from the same run (higher is better for fused):
of the separate pytest-benchmark entries, and of the interleaved entry (the three contenders in
turn within each round), which the targets are judged on when present.
"""
import sys

from reporting import groups, header, load, row, table_head, target_line

TARGET = {"eager": 4.0, "compile": 2.0}


def main(path: str) -> None:
    data = load(path)
    by_size = groups(data, lambda e: (e["device"], e["criterion"], e["n"], e["c"]))
    print(header(data, "exit_gate", any(k[0] == "cuda" for k in by_size)))
    print()
    print("Medians in microseconds; ratio = other / fused (higher means the fused op is faster).")
    print("`separate`: each contender's own pytest-benchmark rounds; `interleaved`: rounds in which the")
    print("three run in turn, so load from elsewhere hits them alike (the target is judged on these).")
    print(f"Targets on CPU: eager/fused >= {TARGET['eager']}, compile/fused >= {TARGET['compile']}.\n")
    print(table_head(["device", "criterion", "N", "C", "fused µs", "eager µs", "compile µs", "eager/fused separate",
                      "compile/fused separate", "eager/fused interleaved", "compile/fused interleaved", "target met"],
                     "llrrrrrrrrrc"))
    met, missed = [], []
    for (dev, crit, n, c), g in sorted(by_size.items()):
        if "fused" not in g.median:
            continue
        r_e, r_c = g.ratio("eager", "fused"), g.ratio("compile", "fused")
        i_e, i_c = g.interleaved_ratio("eager", "fused"), g.interleaved_ratio("compile", "fused")
        ok = (i_e >= TARGET["eager"] and i_c >= TARGET["compile"]) if g.interleaved else \
            (r_e >= TARGET["eager"] and r_c >= TARGET["compile"])
        (met if ok else missed).append(f"{crit} {n}x{c}")
        us = {impl: f"{g.median.get(impl, float('nan')) * 1e6:.1f}" for impl in ("fused", "eager", "compile")}
        print(row([dev, crit, n, c, us["fused"], us["eager"], us["compile"], f"{r_e:.2f}", f"{r_c:.2f}", f"{i_e:.2f}",
                   f"{i_c:.2f}", "yes" if ok else "no"]))
    print("\n" + target_line(met, missed, "sizes"))
    reads = {(n, c): g.median["read_once"] for (_, crit, n, c), g in by_size.items() if crit == "read-once"}
    if reads:
        print("\n" + table_head(["CUDA read-once N", "C", "µs"], "rrr"))
        for (n, c), s in sorted(reads.items()):
            print(row([n, c, f"{s * 1e6:.1f}"]))


if __name__ == "__main__":
    main(sys.argv[1])
