"""What the report scripts share: a pytest-benchmark JSON read into groups of contenders (their
separate entries and the interleaved one that interleaved.py records), ratios of their medians, the
machine header and markdown table lines."""
import dataclasses
import json
import platform
from typing import Callable, Dict, Hashable, List, Optional, Sequence

import torch

NAN = float("nan")


@dataclasses.dataclass
class Group:
    """The entries of one benchmark configuration: per contender (``impl``) of its separate
    pytest-benchmark entries the ``median`` and ``low`` (min) seconds and the ``info`` (extra_info);
    ``interleaved``: median seconds per contender of the interleaved entry, None without one."""

    median: Dict[str, float] = dataclasses.field(default_factory=dict)
    low: Dict[str, float] = dataclasses.field(default_factory=dict)
    info: Dict[str, dict] = dataclasses.field(default_factory=dict)
    interleaved: Optional[Dict[str, float]] = None

    def ratio(self, num: str, den: str) -> float:
        """median[num] / median[den] of the separate entries; nan when ``num`` was not measured."""
        return self.median.get(num, NAN) / self.median[den]

    def interleaved_ratio(self, num: str, den: str) -> float:
        """The same ratio of the interleaved entry's medians; nan without one."""
        return self.interleaved[num] / self.interleaved[den] if self.interleaved else NAN


def load(path: str) -> dict:
    """A pytest-benchmark JSON file."""
    with open(path) as f:
        return json.load(f)


def groups(data: dict, key: Callable[[dict], Hashable]) -> Dict[Hashable, Group]:
    """The benchmarks of ``data`` grouped by ``key(extra_info)``."""
    out: Dict[Hashable, Group] = {}
    for b in data["benchmarks"]:
        e, s = b["extra_info"], b["stats"]
        g = out.setdefault(key(e), Group())
        if e["impl"] == "interleaved":
            g.interleaved = e["median_s"]
        else:
            g.median[e["impl"]], g.low[e["impl"]], g.info[e["impl"]] = s["median"], s["min"], e
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(data: dict, title: str, cuda: bool) -> str:
    """The report's title with the run's date, then lines naming the machine it was measured on."""
    info = data.get("machine_info", {})
    lines = [f"# {title} benchmark — {data.get('datetime', '')[:10]}\n",
             f"- CPU: {cpu_name()} ({info.get('cpu', {}).get('count', '?')} logical cores)",
             f"- torch {torch.__version__}, {torch.get_num_threads()} threads"]
    if cuda:
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    return "\n".join(lines)


def table_head(columns: Sequence[str], align: str) -> str:
    """A markdown table's header and alignment lines; ``align``: one letter per column, l, r or c."""
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    return row(columns) + "\n|" + "|".join(marks[a] for a in align) + "|"


def row(cells: Sequence[object]) -> str:
    """One markdown table line."""
    return "| " + " | ".join(map(str, cells)) + " |"


def target_line(met: List[str], missed: List[str], what: str) -> str:
    """How many of the configurations (``what``) met the target, and which did not."""
    total = len(met) + len(missed)
    return f"Target met at {len(met)} of {total} {what}." + (f" Missed: {', '.join(missed)}." if missed else "")


def op_race_table(path: str, title: str, contenders: Sequence[str], legend: Sequence[str], target: float) -> None:
    """Print the results table of an op benchmark whose cases are (layer, fmt, n) and whose
    interleaved contenders include ``op``, ``eager``, ``compile`` and ``module``: ms per contender,
    eager/op, compile/op and the module's speed over the faster of eager and compile against
    ``target``. ``legend``: lines saying what each contender is."""
    data = load(path)
    by_case = groups(data, lambda e: (e["layer"], e["fmt"], e["n"]))
    print(header(data, title, False))
    print()
    print(f"Interleaved medians in ms (each round runs the {len(contenders)} in turn); ratios above 1: the second is "
          "faster.")
    print("\n".join(legend))
    print(f"Target: module at least {target} x as fast as the faster of eager and compile at every case.\n")
    print(table_head(["layer", "format", "N", *(f"{c} ms" for c in contenders), "eager/op", "compile/op",
                      "best stock/module", "target met"], "llr" + "r" * len(contenders) + "rrrc"))
    met, missed = [], []
    for key in sorted(by_case):
        ms = {c: by_case[key].interleaved[c] * 1e3 for c in contenders}
        best = min(ms["eager"], ms["compile"])
        ok = best / ms["module"] >= target
        (met if ok else missed).append(f"{key[0]} {key[1]} N={key[2]}")
        print(row([*key, *(f"{ms[c]:.3f}" for c in contenders), f"{ms['eager'] / ms['op']:.2f}",
                   f"{ms['compile'] / ms['op']:.2f}", f"{best / ms['module']:.2f}", "yes" if ok else "no"]))
    print("\n" + target_line(met, missed, "cases"))
