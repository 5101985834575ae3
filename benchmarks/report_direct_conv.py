"""Turn the JSON of benchmarks/test_bench_direct_conv.py into the markdown results table.

usage: python benchmarks/report_direct_conv.py RESULTS.json > benchmarks/results/direct_conv-<device>-<date>.md
"""
import sys

from reporting import groups, header, load, row, table_head, target_line

TARGET = 0.9  # eexit.nn.Conv2d / the faster of eager and compile, in speed


def main(path: str) -> None:
    data = load(path)
    by_case = groups(data, lambda e: (e["layer"], e["fmt"], e["n"]))
    info = {k: next(b["extra_info"] for b in data["benchmarks"]
                    if (b["extra_info"]["layer"], b["extra_info"]["fmt"], b["extra_info"]["n"]) == k) for k in by_case}
    print(header(data, "direct_conv", False))
    print()
    print("Interleaved medians in ms (each round runs the four in turn); ratios above 1: the second is faster.")
    print("direct: eexit.ops.direct_conv2d; eager: F.conv2d (oneDNN); compile: torch.compile of it;")
    print("module: eexit.nn.Conv2d in inference mode, which runs direct where `rule` says so and F.conv2d elsewhere.")
    print(f"Target: module at least {TARGET} x as fast as the faster of eager and compile at every case.\n")
    print(table_head(["layer", "format", "N", "MMACs", "direct ms", "eager ms", "compile ms", "module ms", "rule",
                      "eager/direct", "best stock/module", "target met"], "llrrrrrrcrrc"))
    met, missed = [], []
    for key in sorted(by_case, key=lambda k: (k[0], k[1], k[2])):
        g, e = by_case[key], info[key]
        ms = {c: g.interleaved[c] * 1e3 for c in ("direct", "eager", "compile", "module")}
        best = min(ms["eager"], ms["compile"])
        ok = best / ms["module"] >= TARGET
        (met if ok else missed).append(f"{key[0]} {key[1]} N={key[2]}")
        print(row([key[0], key[1], key[2], f"{e['macs'] / 1e6:.1f}", *(f"{ms[c]:.3f}" for c in ms),
                   "direct" if e["direct"] else "F.conv2d", f"{ms['eager'] / ms['direct']:.2f}",
                   f"{best / ms['module']:.2f}", "yes" if ok else "no"]))
    print("\n" + target_line(met, missed, "cases"))


if __name__ == "__main__":
    main(sys.argv[1])
