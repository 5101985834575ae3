"""Drop pytest-benchmark's per-round raw timings from a JSON file (keeps stats): for results/."""
import json
import sys

from reporting import load

for path in sys.argv[1:]:
    data = load(path)
    for b in data["benchmarks"]:
        b["stats"].pop("data", None)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
