"""Markdown table of an early-exit benchmark JSON (test_bench_branchynet.py, test_bench_msdnet.py).

usage: python benchmarks/report_early_exit.py RESULTS.json
Speedup = full / infer (medians, same run); cost ratio = full cost / expected cost, where the
expected cost weighs what a sample leaving at exit k pays (stages and exits 1..k) by the measured
exit fractions. Target: speedup >= 0.85 x cost ratio. Where the JSON has an interleaved entry
(rounds running the three contenders in turn), its speedup is reported too.
"""
import json
import sys
from collections import defaultdict


from report import machine_lines


def main(path: str) -> None:
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        key = (e["device"], e["model"], e["batch"])
        if e["impl"] == "interleaved":
            groups[key]["interleaved"] = e["median_s"]
            continue
        groups[key][e["impl"]] = b["stats"]["median"]
        groups[key].setdefault("info", {}).update(e)
    print(f"# early-exit benchmark — {data.get('datetime', '')[:10]}\n")
    print("\n".join(machine_lines(data, any(k[0] == "cuda" for k in groups))))
    print("\nBatch 1 rows time 32 samples one after the other. Medians in ms.\n")
    print("| device | model | batch | exit fractions (measured) | infer ms | full ms | simulate ms | speedup | "
          "cost ratio | speedup / cost ratio | interleaved speedup | interleaved speedup / cost ratio | paper speedup |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (dev, model, batch), g in sorted(groups.items()):
        info = g["info"]
        fr = info.get("exit_fractions", [])
        expected = sum(f * c for f, c in zip(fr, info["exit_costs"]))
        ratio = info["full_cost"] / expected if expected else float("nan")
        speedup = g["full"] / g["infer"]
        paper = info.get("paper_speedup")
        inter = g.get("interleaved")
        i_speedup = inter["full"] / inter["infer"] if inter else float("nan")
        print(f"| {dev} | {model} | {batch} | {' / '.join(f'{100 * f:.1f}' for f in fr)} | {g['infer'] * 1e3:.2f} | "
              f"{g['full'] * 1e3:.2f} | {g['simulate'] * 1e3:.2f} | {speedup:.2f} | {ratio:.2f} | {speedup / ratio:.2f} | "
              f"{i_speedup:.2f} | {i_speedup / ratio:.2f} | "
              f"{'' if paper is None else f'{paper}x (batch 1)'} |")


if __name__ == "__main__":
    main(sys.argv[1])
