"""Turn the JSON of benchmarks/test_bench_max_pool.py into the markdown results table.

usage: python benchmarks/report_max_pool.py RESULTS.json > benchmarks/results/max_pool-<device>-<date>.md
"""
import sys

from reporting import op_race_table

LEGEND = ["op: eexit.ops.max_pool2d; eager: F.max_pool2d; compile: torch.compile of it;",
          "module: eexit.nn.MaxPool2d in inference mode (the op)."]

if __name__ == "__main__":
    op_race_table(sys.argv[1], "max_pool", ("op", "eager", "compile", "module"), LEGEND, target=1.0)
