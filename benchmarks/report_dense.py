"""Turn the JSON of benchmarks/test_bench_dense.py into the markdown results table.

usage: python benchmarks/report_dense.py RESULTS.json > benchmarks/results/dense_block-<device>-<date>.md
Ratios are eager/fused and compile/fused medians from the same run (higher is better for fused):
of the separate pytest-benchmark entries, and of the interleaved entry (the three contenders in
turn within each round), which the target is judged on when present.
"""
import json
import sys
from collections import defaultdict


from report import machine_lines

TARGET = 1.3  # eager/fused on every shape
NOISY = 1.25  # flag a benchmark whose median exceeds its min by more than this factor
MIB = 2.0 ** 20


def main(path: str) -> None:
    data = json.load(open(path))
    med, low, info, noisy, inter = defaultdict(dict), defaultdict(dict), defaultdict(dict), [], {}
    for b in data["benchmarks"]:
        e, s = b["extra_info"], b["stats"]
        key = (e["device"], e["family"], e["in_channels"], e["px"], e["growth"], e["num_layers"], e["n"])
        if e["impl"] == "interleaved":
            inter[key] = e["median_s"]
            continue
        med[key][e["impl"]] = s["median"]
        low[key][e["impl"]] = s["min"]
        info[key][e["impl"]] = e
        if s["median"] > NOISY * s["min"]:
            noisy.append(f"{b['group']} {e['impl']}: median {s['median'] * 1e3:.1f} ms, min {s['min'] * 1e3:.1f} ms")
    layouts = sorted({e["layout"] for v in info.values() for e in v.values()})
    dtypes = sorted({e["dtype"] for v in info.values() for e in v.values()})
    rounds = sorted({e["rounds"] for v in info.values() for e in v.values()})
    print(f"# DenseConcatBlock benchmark — {data.get('datetime', '')[:10]}\n")
    print("\n".join(machine_lines(data, any(k[0] == "cuda" for k in med))))
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
    print("| device | block | C in | px | growth | L | N | fused ms | eager ms | compile ms | eager/fused "
          "| compile/fused | eager/fused min | eager/fused interleaved | compile/fused interleaved | fused alloc | eager alloc | fused peak | eager peak | out "
          "| target met |")
    print("|---|---" + "|---:" * 18 + "|:---:|")
    met, missed = [], []
    nan = float("nan")
    order = lambda kv: (kv[0][0], kv[0][1].startswith("densenet"), kv[0][1], kv[0][5], kv[0][6])  # noqa: E731
    for key, m in sorted(med.items(), key=order):
        if "fused" not in m:
            continue
        dev, family, c, hw, g, layers, n = key
        f, e, cp = m["fused"], m.get("eager", nan), m.get("compile", nan)
        mem = {impl: info[key].get(impl, {}) for impl in ("fused", "eager")}
        mib = {(i, k): (mem[i].get(f"mem_{k}_bytes") or nan) / MIB
               for i in ("fused", "eager") for k in ("alloc", "peak")}
        out_mib = mem["fused"].get("out_bytes", nan) / MIB
        e_min = low[key].get("eager", nan) / low[key]["fused"]
        i = inter.get(key)
        i_e, i_c = (i["eager"] / i["fused"], i["compile"] / i["fused"]) if i else (nan, nan)
        ok = (i_e if i else e / f) >= TARGET
        (met if ok else missed).append(f"{family} L={layers} N={n}")
        print(f"| {dev} | {family} | {c} | {hw} | {g} | {layers} | {n} | {f * 1e3:.2f} | {e * 1e3:.2f} | "
              f"{cp * 1e3:.2f} | {e / f:.2f} | {cp / f:.2f} | {e_min:.2f} | {i_e:.2f} | {i_c:.2f} | "
              f"{mib['fused', 'alloc']:.1f} | {mib['eager', 'alloc']:.1f} | "
              f"{mib['fused', 'peak']:.1f} | {mib['eager', 'peak']:.1f} | {out_mib:.1f} | "
              f"{'yes' if ok else 'no'} |")
    print(f"\nTarget met at {len(met)} of {len(met) + len(missed)} shapes." +
          (f" Missed: {', '.join(missed)}." if missed else ""))
    if noisy:
        print(f"\nNoisy (median > {NOISY} x min):\n")
        for line in noisy:
            print(f"- {line}")


if __name__ == "__main__":
    main(sys.argv[1])
