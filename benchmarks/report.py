"""Turn a pytest-benchmark JSON file into the markdown results table.

usage: python benchmarks/report.py RESULTS.json > benchmarks/results/exit_gate-<device>-<date>.md
Ratios are eager/fused and compile/fused medians from the same run (higher is better for fused):
of the separate pytest-benchmark entries, and of the interleaved entry (the three contenders in
turn within each round), which the targets are judged on when present.
"""
import json
import platform
import sys
from collections import defaultdict

import torch

TARGET = {"eager": 4.0, "compile": 2.0}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines(data: dict, cuda: bool) -> list:
    """The header lines naming the machine a pytest-benchmark JSON was measured on."""
    info = data.get("machine_info", {})
    lines = [f"- CPU: {cpu_name()} ({info.get('cpu', {}).get('count', '?')} logical cores)",
             f"- torch {torch.__version__}, {torch.get_num_threads()} threads"]
    if cuda:
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    return lines


def main(path: str) -> None:
    data = json.load(open(path))
    med = defaultdict(dict)
    inter = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        key = (e["device"], e["criterion"], e["n"], e["c"])
        if e["impl"] == "interleaved":
            inter[key] = e["median_s"]
        else:
            med[key][e["impl"]] = b["stats"]["median"]
    print(f"# exit_gate benchmark — {data.get('datetime', '')[:10]}\n")
    print("\n".join(machine_lines(data, any(k[0] == "cuda" for k in med))))
    print()
    print("Medians in microseconds; ratio = other / fused (higher means the fused op is faster).")
    print("`separate`: each contender's own pytest-benchmark rounds; `interleaved`: rounds in which the")
    print("three run in turn, so load from elsewhere hits them alike (the target is judged on these).")
    print(f"Targets on CPU: eager/fused >= {TARGET['eager']}, compile/fused >= {TARGET['compile']}.\n")
    print("| device | criterion | N | C | fused µs | eager µs | compile µs | eager/fused separate | "
          "compile/fused separate | eager/fused interleaved | compile/fused interleaved | target met |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    nan = float("nan")
    missed = []
    for key, m in sorted(med.items()):
        if "fused" not in m:
            continue
        dev, crit, n, c = key
        f = m["fused"]
        r_e, r_c = m.get("eager", nan) / f, m.get("compile", nan) / f
        i = inter.get(key)
        i_e, i_c = (i["eager"] / i["fused"], i["compile"] / i["fused"]) if i else (nan, nan)
        ok = (i_e >= TARGET["eager"] and i_c >= TARGET["compile"]) if i else \
            (r_e >= TARGET["eager"] and r_c >= TARGET["compile"])
        if not ok:
            missed.append(f"{crit} {n}x{c}")
        print(
            f"| {dev} | {crit} | {n} | {c} | {f * 1e6:.1f} | {m.get('eager', nan) * 1e6:.1f} | "
            f"{m.get('compile', nan) * 1e6:.1f} | {r_e:.2f} | {r_c:.2f} | {i_e:.2f} | {i_c:.2f} | "
            f"{'yes' if ok else 'no'} |"
        )
    print(f"\nTarget met at {sum(1 for m in med.values() if 'fused' in m) - len(missed)} of "
          f"{sum(1 for m in med.values() if 'fused' in m)} sizes." + (f" Missed: {', '.join(missed)}." if missed else ""))
    reads = {k: v for k, v in med.items() if k[1] == "read-once"}
    if reads:
        print("\n| CUDA read-once N | C | µs |\n|---:|---:|---:|")
        for (_, _, n, c), m in sorted(reads.items()):
            print(f"| {n} | {c} | {m['read_once'] * 1e6:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
