"""Drop pytest-benchmark's per-round raw timings from a JSON file (keeps stats): for results/."""
import json
import sys

for path in sys.argv[1:]:
    data = json.load(open(path))
    for b in data["benchmarks"]:
        b["stats"].pop("data", None)
    json.dump(data, open(path, "w"), indent=1)
