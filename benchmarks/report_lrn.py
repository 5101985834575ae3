"""Turn the JSON of benchmarks/test_bench_lrn.py into the markdown results table.

usage: python benchmarks/report_lrn.py RESULTS.json > benchmarks/results/lrn-<device>-<date>.md
"""
import sys

from reporting import op_race_table

LEGEND = ["op: eexit.ops.local_response_norm; eager: F.local_response_norm; compile: torch.compile of it;",
          "slices: eexit.nn.LocalResponseNorm's reference path (what trains); module: its inference path (the op)."]

if __name__ == "__main__":
    op_race_table(sys.argv[1], "lrn", ("op", "eager", "compile", "slices", "module"), LEGEND, target=1.0)
