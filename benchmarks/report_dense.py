"""Turn the JSON of benchmarks/test_bench_dense.py into the markdown results table.

usage: python benchmarks/report_dense.py RESULTS.json > benchmarks/results/dense_block-<device>-<date>.md
Ratios are eager/fused and compile/fused medians from the same run (higher is better for fused):
of the separate pytest-benchmark entries, and of the interleaved entry (the three contenders in
turn within each round), which the target is judged on when present.
"""
import sys

from reporting import NAN, groups, header, load, row, table_head, target_line

TARGET = 1.3  # eager/fused on every shape
NOISY = 1.25  # flag a benchmark whose median exceeds its min by more than this factor
MIB = 2.0 ** 20


def main(path: str) -> None:
    data = load(path)
    by_shape = groups(data, lambda e: (e["device"], e["family"], e["in_channels"], e["px"], e["growth"],
                                       e["num_layers"], e["n"]))
    noisy = [f"{b['group']} {b['extra_info']['impl']}: median {b['stats']['median'] * 1e3:.1f} ms, "
             f"min {b['stats']['min'] * 1e3:.1f} ms" for b in data["benchmarks"]
             if b["extra_info"]["impl"] != "interleaved" and b["stats"]["median"] > NOISY * b["stats"]["min"]]
    infos = [e for g in by_shape.values() for e in g.info.values()]
    layouts = sorted({e["layout"] for e in infos})
    dtypes = sorted({e["dtype"] for e in infos})
    rounds = sorted({e["rounds"] for e in infos})
    print(header(data, "DenseConcatBlock", any(k[0] == "cuda" for k in by_shape)))
    print(f"- forward, eval mode, inference_mode, {'/'.join(dtypes)}, input layout {'/'.join(layouts)}, bn_size 4")
    print(f"- pedantic: 1 warm-up round, then {rounds[0]}–{rounds[-1]} rounds of 1 call each "
          "(rounds chosen per benchmark from one warm call's time)")
    print("- contenders: fused = backend 'fused'; eager = backend 'reference' (torch.cat per layer); "
          "compile = torch.compile(reference module, dynamic=False), compiled and warmed up outside the timing")
    print("- every contender's output was checked against the eager reference (assert_close, atol = rtol = 1e-4)\n")
    print("Medians in milliseconds; ratio = other / fused (higher means the fused backend is faster); "
          "`eager/fused min` is the same ratio of the fastest rounds; `interleaved` ratios come from rounds "
          "in which the three contenders run in turn, so load from elsewhere hits them alike.")
    print(f"Target: eager/fused >= {TARGET} at every shape (judged on the interleaved ratio where measured).\n")
    print("Memory of one forward in MiB: `alloc` = bytes allocated during it, temporaries freed within it included "
          "(CPU: sum of positive `self_cpu_memory_usage` over a torch.profiler trace with profile_memory=True; "
          "not measured on CUDA); `peak` = highest level above the start (CPU: running sum of the same trace's "
          "allocations and frees; CUDA: torch.cuda.max_memory_allocated); `out` = the output tensor.\n")
    print(table_head(["device", "block", "C in", "px", "growth", "L", "N", "fused ms", "eager ms", "compile ms",
                      "eager/fused", "compile/fused", "eager/fused min", "eager/fused interleaved",
                      "compile/fused interleaved", "fused alloc", "eager alloc", "fused peak", "eager peak", "out",
                      "target met"], "ll" + "r" * 18 + "c"))
    met, missed = [], []
    order = lambda kv: (kv[0][0], kv[0][1].startswith("densenet"), kv[0][1], kv[0][5], kv[0][6])  # noqa: E731
    for key, g in sorted(by_shape.items(), key=order):
        if "fused" not in g.median:
            continue
        dev, family, c, hw, growth, layers, n = key
        mem = [f"{(g.info.get(i, {}).get(f'mem_{k}_bytes') or NAN) / MIB:.1f}"
               for k in ("alloc", "peak") for i in ("fused", "eager")]  # fused alloc, eager alloc, fused peak, ...
        i_e = g.interleaved_ratio("eager", "fused")
        ok = (i_e if g.interleaved else g.ratio("eager", "fused")) >= TARGET
        (met if ok else missed).append(f"{family} L={layers} N={n}")
        ms = {impl: f"{g.median.get(impl, NAN) * 1e3:.2f}" for impl in ("fused", "eager", "compile")}
        print(row([dev, family, c, hw, growth, layers, n, ms["fused"], ms["eager"], ms["compile"],
                   f"{g.ratio('eager', 'fused'):.2f}", f"{g.ratio('compile', 'fused'):.2f}",
                   f"{g.low.get('eager', NAN) / g.low['fused']:.2f}", f"{i_e:.2f}",
                   f"{g.interleaved_ratio('compile', 'fused'):.2f}",
                   *mem,
                   f"{g.info['fused'].get('out_bytes', NAN) / MIB:.1f}", "yes" if ok else "no"]))
    print("\n" + target_line(met, missed, "shapes"))
    if noisy:
        print(f"\nNoisy (median > {NOISY} x min):\n")
        for line in noisy:
            print(f"- {line}")


if __name__ == "__main__":
    main(sys.argv[1])
