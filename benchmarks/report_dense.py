"""Turn the JSON of benchmarks/test_bench_dense.py into the markdown results table.

usage: python benchmarks/report_dense.py RESULTS.json > benchmarks/results/dense_block-<device>-<date>.md
Ratios are eager/fused and compile/fused medians from the same run (higher is better for fused).
"""
import json
import sys
from collections import defaultdict

import torch

from report import cpu_name

TARGET = 1.3  # eager/fused on every shape
NOISY = 1.25  # flag a benchmark whose median exceeds its min by more than this factor
MIB = 2.0 ** 20


def main(path: str) -> None:
    data = json.load(open(path))
    med, info, noisy = defaultdict(dict), defaultdict(dict), []
    for b in data["benchmarks"]:
        e, s = b["extra_info"], b["stats"]
        key = (e["device"], e["family"], e["in_channels"], e["px"], e["growth"], e["num_layers"], e["n"])
        med[key][e["impl"]] = s["median"]
        info[key][e["impl"]] = e
        if s["median"] > NOISY * s["min"]:
            noisy.append(f"{b['group']} {e['impl']}: median {s['median'] * 1e3:.1f} ms, min {s['min'] * 1e3:.1f} ms")
    layouts = sorted({e["layout"] for v in info.values() for e in v.values()})
    dtypes = sorted({e["dtype"] for v in info.values() for e in v.values()})
    rounds = sorted({e["rounds"] for v in info.values() for e in v.values()})
    machine = data.get("machine_info", {})
    print(f"# DenseConcatBlock benchmark — {data.get('datetime', '')[:10]}\n")
    print(f"- CPU: {cpu_name()} ({machine.get('cpu', {}).get('count', '?')} logical cores)")
    print(f"- torch {torch.__version__}, {torch.get_num_threads()} threads")
    if any(k[0] == "cuda" for k in med):
        print(f"- GPU: {torch.cuda.get_device_name()}")
    print(f"- forward, eval mode, inference_mode, {'/'.join(dtypes)}, input layout {'/'.join(layouts)}, bn_size 4")
    print(f"- pedantic: 1 warm-up round, then {rounds[0]}–{rounds[-1]} rounds of 1 call each (about 1.5 s per benchmark)")
    print("- contenders: fused = backend 'fused'; eager = backend 'reference' (torch.cat per layer); "
          "compile = torch.compile(reference module, dynamic=False), compiled and warmed up outside the timing")
    print("- every contender's output was checked against the eager reference (assert_close, atol = rtol = 1e-4)\n")
    print("Medians in milliseconds; ratio = other / fused (higher means the fused backend is faster).")
    print(f"Target: eager/fused >= {TARGET} at every shape. Memory of one forward in MiB: on CPU the bytes allocated "
          "during it (sum of positive `self_cpu_memory_usage` in a torch.profiler trace), on CUDA the peak above "
          "the allocation before it; `out` is the output tensor.\n")
    print("| device | block | C in | px | growth | L | N | fused ms | eager ms | compile ms | eager/fused "
          "| compile/fused | fused MiB | eager MiB | out MiB | target met |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    met, missed = [], []
    nan = float("nan")
    for key, m in sorted(med.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][5], kv[0][6])):
        if "fused" not in m:
            continue
        dev, family, c, hw, g, layers, n = key
        f, e, cp = m["fused"], m.get("eager", nan), m.get("compile", nan)
        mem = {impl: info[key].get(impl, {}) for impl in ("fused", "eager")}
        field = "mem_peak_bytes" if dev == "cuda" else "mem_alloc_bytes"
        f_mib, e_mib = (mem[i].get(field, nan) / MIB for i in ("fused", "eager"))
        out_mib = mem["fused"].get("out_bytes", nan) / MIB
        ok = e / f >= TARGET
        (met if ok else missed).append(f"{family} L={layers} N={n}")
        print(f"| {dev} | {family} | {c} | {hw} | {g} | {layers} | {n} | {f * 1e3:.2f} | {e * 1e3:.2f} | "
              f"{cp * 1e3:.2f} | {e / f:.2f} | {cp / f:.2f} | {f_mib:.1f} | {e_mib:.1f} | {out_mib:.1f} | "
              f"{'yes' if ok else 'no'} |")
    print(f"\nTarget met at {len(met)} of {len(met) + len(missed)} shapes." +
          (f" Missed: {', '.join(missed)}." if missed else ""))
    if noisy:
        print(f"\nNoisy (median > {NOISY} x min):\n")
        for line in noisy:
            print(f"- {line}")


if __name__ == "__main__":
    main(sys.argv[1])
