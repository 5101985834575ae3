"""Every Python code block of README.md runs as written (the shell blocks are the Makefile's and
CI's own commands, which CI runs)."""
import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    with torch.random.fork_rng():
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
