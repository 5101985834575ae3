"""eexit's nn.Modules: the same parameters and state_dict in every backend (see backend.py)."""
from eexit.nn.backend import BACKENDS, FusedModule, set_backend
from eexit.nn.conv import BottleneckConv, ConvBNReLU
from eexit.nn.dense import DenseConcatBlock, DenseLayer
from eexit.nn.early_exit import EarlyExitModel, EarlyExitNetwork, attach_exits, pool_linear_head

__all__ = [
    "BACKENDS", "BottleneckConv", "ConvBNReLU", "DenseConcatBlock", "DenseLayer", "EarlyExitModel", "EarlyExitNetwork", "FusedModule",
    "attach_exits", "pool_linear_head", "set_backend",
]
