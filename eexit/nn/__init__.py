"""eexit's nn.Modules: the same parameters and state_dict on every compute path (see execution.py)."""
from eexit.nn.conv import BottleneckConv, ConvBNReLU
from eexit.nn.dense import DenseConcatBlock, DenseLayer
from eexit.nn.dense_swap import fuse_dense_blocks
from eexit.nn.direct_conv import Conv2d
from eexit.nn.early_exit import EarlyExitModel, EarlyExitNetwork, attach_exits
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
from eexit.nn.graph_cuts import GraphStage
from eexit.nn.heads import CutExit, TokenHead, default_head, pool_linear_head
from eexit.nn.lrn import LocalResponseNorm
from eexit.nn.pool import MaxPool2d

__all__ = [
    "BACKENDS", "COMPUTE_PATHS", "GATE_OPS", "BottleneckConv", "ComputePathModule", "Conv2d", "ConvBNReLU", "CutExit",
    "DenseConcatBlock", "DenseLayer", "EarlyExitModel", "EarlyExitNetwork", "GraphStage", "LocalResponseNorm",
    "MaxPool2d", "TokenHead", "attach_exits", "default_head", "fuse_dense_blocks", "pool_linear_head",
    "restoring_backends", "set_backend", "set_compute_path", "set_gate_ops",
]
