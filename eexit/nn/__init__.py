"""eexit's nn.Modules: the same parameters and state_dict in every backend (see backend.py)."""
from eexit.nn.backend import BACKENDS, FusedModule, set_backend
from eexit.nn.conv import BottleneckConv, ConvBNReLU
from eexit.nn.dense import DenseConcatBlock, DenseLayer

__all__ = ["BACKENDS", "BottleneckConv", "ConvBNReLU", "DenseConcatBlock", "DenseLayer", "FusedModule", "set_backend"]
