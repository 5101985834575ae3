"""eexit's nn.Modules: the same parameters and state_dict on every compute path (see execution.py)."""
from eexit.nn.conv import BottleneckConv, ConvBNReLU
from eexit.nn.dense import DenseConcatBlock, DenseLayer
from eexit.nn.early_exit import EarlyExitModel, EarlyExitNetwork, attach_exits, pool_linear_head
from eexit.nn.execution import (
    BACKENDS,
    COMPUTE_PATHS,
    GATE_OPS,
    ComputePathModule,
    restoring_backends,
    set_backend,
    set_compute_path,
    set_gate_ops,
)

__all__ = [
    "BACKENDS", "COMPUTE_PATHS", "GATE_OPS", "BottleneckConv", "ComputePathModule", "ConvBNReLU",
    "DenseConcatBlock", "DenseLayer", "EarlyExitModel", "EarlyExitNetwork", "attach_exits", "pool_linear_head",
    "restoring_backends", "set_backend", "set_compute_path", "set_gate_ops",
]
