"""Turn the JSON of benchmarks/test_bench_lrn.py into the markdown results table.

usage: python benchmarks/report_lrn.py RESULTS.json > benchmarks/results/lrn-<device>-<date>.md
"""
import sys

from reporting import groups, header, load, row, table_head, target_line

TARGET = 1.0  # eexit.nn.LocalResponseNorm / the faster of eager and compile, in speed
CONTENDERS = ("op", "eager", "compile", "slices", "module")


def main(path: str) -> None:
    data = load(path)
    by_case = groups(data, lambda e: (e["layer"], e["fmt"], e["n"]))
    print(header(data, "lrn", False))
    print()
    print("Interleaved medians in ms (each round runs the five in turn); ratios above 1: the second is faster.")
    print("op: eexit.ops.local_response_norm; eager: F.local_response_norm; compile: torch.compile of it;")
    print("slices: eexit.nn.LocalResponseNorm's reference path (what trains); module: its inference path (the op).")
    print(f"Target: module at least {TARGET} x as fast as the faster of eager and compile at every case.\n")
    print(table_head(["layer", "format", "N", "op ms", "eager ms", "compile ms", "slices ms", "module ms",
                      "eager/op", "compile/op", "best stock/module", "target met"], "llrrrrrrrrrc"))
    met, missed = [], []
    for key in sorted(by_case, key=lambda k: (k[0], k[1], k[2])):
        ms = {c: by_case[key].interleaved[c] * 1e3 for c in CONTENDERS}
        best = min(ms["eager"], ms["compile"])
        ok = best / ms["module"] >= TARGET
        (met if ok else missed).append(f"{key[0]} {key[1]} N={key[2]}")
        print(row([key[0], key[1], key[2], *(f"{ms[c]:.3f}" for c in CONTENDERS), f"{ms['eager'] / ms['op']:.2f}",
                   f"{ms['compile'] / ms['op']:.2f}", f"{best / ms['module']:.2f}", "yes" if ok else "no"]))
    print("\n" + target_line(met, missed, "cases"))


if __name__ == "__main__":
    main(sys.argv[1])
