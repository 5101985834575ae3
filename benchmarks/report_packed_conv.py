"""Turn the JSON of benchmarks/test_bench_packed_conv.py into the markdown results table.

usage: python benchmarks/report_packed_conv.py RESULTS.json > benchmarks/results/packed_conv-<device>-<date>.md
"""
import sys

from reporting import op_race_table

LEGEND = ["op: eexit.nn.packed_conv.conv2d_onednn (oneDNN, the weight packed once); eager: F.conv2d (oneDNN, the",
          "plain weight reordered on every call); compile: torch.compile of it; module: eexit.nn.Conv2d's inference",
          "path (the op behind the module's checks). All channels_last float32, C -> C 3x3, padding 1."]

if __name__ == "__main__":
    op_race_table(sys.argv[1], "packed_conv", ("op", "eager", "compile", "module"), LEGEND, target=1.0)
