"""The configuration of one bidirectional mLSTM layer (:class:`seisbench_xlstm.bimlstm.BiMLSTMLayer`, which
re-exports it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BiMLSTMLayerConfig:
    """Configuration of one bidirectional mLSTM layer.

    :param embedding_dim: model width ``d_model``
    :param num_heads: mLSTM heads per direction
    :param proj_factor: up-projection factor of the inner dimension
    :param qkv_proj_blocksize: block size of the headwise q/k/v projections
    :param conv1d_kernel_size: kernel size of the causal convolution before q/k
    :param dropout: dropout on the layer output before the residual sum
    :param bias: bias in the up/down projections
    :param share_projections: one up/down projection for both directions (see module docstring)
    :param num_blocks: number of layers in the stack, used to scale the down-projection's initialisation
    :param round_inner_to: the inner dimension is rounded up to a multiple of this
    """

    embedding_dim: int = 128
    num_heads: int = 4
    proj_factor: float = 2.0
    qkv_proj_blocksize: int = 4
    conv1d_kernel_size: int = 4
    dropout: float = 0.1
    bias: bool = False
    share_projections: bool = False
    num_blocks: int = 1
    round_inner_to: int = 64

    @property
    def inner_dim(self) -> int:
        return int(math.ceil(self.proj_factor * self.embedding_dim / self.round_inner_to) * self.round_inner_to)

    def __post_init__(self):
        if self.embedding_dim < 1 or self.num_heads < 1:
            raise ValueError("embedding_dim and num_heads must be positive")
        if self.inner_dim % self.num_heads:
            raise ValueError(f"inner dimension {self.inner_dim} is not divisible by num_heads={self.num_heads}")
        if self.inner_dim % self.qkv_proj_blocksize:
            raise ValueError(f"inner dimension {self.inner_dim} is not divisible by "
                             f"qkv_proj_blocksize={self.qkv_proj_blocksize}")
