"""The two xLSTM backbones: a deep sequential stack and an xLSTM U-Net.

Both map a waveform window ``(batch, channels, samples)`` to per-sample features ``(batch, features, samples)``
through the same three parts, which the pretraining recipes also use separately:

1. :meth:`embed`: :class:`ConvSubsampling`, a 4x convolutional subsampling of the waveform into tokens
   ``(batch, samples / 4, d_model)``, keeping the full-rate and half-rate feature maps as skips.
2. :meth:`encode`: the bidirectional mLSTM layers on the tokens, ``(batch, tokens, d_model)``.
3. :meth:`decode`: :class:`SampleDecoder`, learned 4x upsampling back to the sample rate, fused with the skips.

The mLSTM kernel is a run-time attribute (``backbone.kernel``, default ``"auto"``), never part of the config.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from xlstm.components.ln import LayerNorm

from .bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig
from .kernels import AUTO, resolve_kernel, validate_kernel_name


class ConvSubsampling(nn.Module):
    """Waveform ``(batch, in_channels, samples)`` to tokens ``(batch, samples / 4, d_model)``.

    Two stride-2 convolutions after a full-rate convolution, GELU activations. Also returns the full-rate
    ``(batch, channels[0], samples)`` and half-rate ``(batch, channels[1], samples / 2)`` feature maps.
    """

    def __init__(self, in_channels: int, d_model: int, channels: tuple[int, int]):
        super().__init__()
        c0, c1 = channels
        self.conv0 = nn.Conv1d(in_channels, c0, 7, padding=3)
        self.conv1 = nn.Conv1d(c0, c1, 7, stride=2, padding=3)
        self.conv2 = nn.Conv1d(c1, d_model, 5, stride=2, padding=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        s0 = F.gelu(self.conv0(x))
        s1 = F.gelu(self.conv1(s0))
        tokens = self.conv2(s1).transpose(1, 2)
        return tokens, (s0, s1)


class SampleDecoder(nn.Module):
    """Tokens ``(batch, tokens, d_model)`` plus stem skips to features ``(batch, channels[1], 4 * tokens)``."""

    def __init__(self, d_model: int, skip_channels: tuple[int, int], channels: tuple[int, int]):
        super().__init__()
        c_half, c_full = channels
        s0, s1 = skip_channels
        self.up1 = nn.ConvTranspose1d(d_model, c_half, 4, stride=2, padding=1)
        self.fuse1 = nn.Conv1d(c_half + s1, c_half, 5, padding=2)
        self.up0 = nn.ConvTranspose1d(c_half, c_full, 4, stride=2, padding=1)
        self.fuse0 = nn.Conv1d(c_full + s0, c_full, 7, padding=3)

    def forward(self, tokens: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        s0, s1 = skips
        x = F.gelu(self.up1(tokens.transpose(1, 2)))
        x = F.gelu(self.fuse1(torch.cat([x, s1], dim=1)))
        x = F.gelu(self.up0(x))
        return F.gelu(self.fuse0(torch.cat([x, s0], dim=1)))


@dataclass
class BackboneConfig:
    """Settings common to both backbones (see the subclasses for the seed values).

    :param in_channels: waveform components (3 for ZNE)
    :param num_heads: mLSTM heads per direction
    :param proj_factor: mLSTM up-projection factor
    :param conv1d_kernel_size: causal conv kernel inside each mLSTM direction
    :param dropout: dropout on each mLSTM layer's output
    :param stem_channels: channels of the full-rate and half-rate stem convolutions
    :param decoder_channels: channels of the half-rate and full-rate decoder stages; the last is the output width
    """

    in_channels: int = 3
    num_heads: int = 4
    proj_factor: float = 2.0
    conv1d_kernel_size: int = 4
    dropout: float = 0.1
    stem_channels: tuple[int, int] = (32, 64)
    decoder_channels: tuple[int, int] = (176, 96)

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples as lists) that :meth:`from_dict` reads back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict | None) -> "BackboneConfig":
        """Builds a config from a dict; unknown keys raise ``ValueError`` naming the valid ones (catches typos)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} option(s) {unknown}. Valid options: {sorted(known)}.")
        for f in fields(cls):
            if f.name in values and isinstance(values[f.name], list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)

    def layer_config(self, d_model: int, blocksize: int, share: bool, num_blocks: int) -> BiMLSTMLayerConfig:
        return BiMLSTMLayerConfig(
            embedding_dim=d_model,
            num_heads=self.num_heads,
            proj_factor=self.proj_factor,
            qkv_proj_blocksize=blocksize,
            conv1d_kernel_size=self.conv1d_kernel_size,
            dropout=self.dropout,
            share_projections=share,
            num_blocks=num_blocks,
        )


@dataclass
class SequentialBackboneConfig(BackboneConfig):
    """Deep sequential stack: 4x subsampling, ``num_layers`` bidirectional mLSTM layers at ``d_model``.

    Seed: 24 layers, d_model 176, 4 heads, q/k/v block size 8, separate weights per direction (~11.4M
    parameters with the default stem and decoder).
    """

    d_model: int = 176
    num_layers: int = 24
    qkv_proj_blocksize: int = 8
    share_projections: bool = False


@dataclass
class UNetBackboneConfig(BackboneConfig):
    """xLSTM U-Net: stages at 1/4, 1/16 and 1/64 of the sample rate (1024/256/64 tokens for 4096 samples).

    Encoder stages ``dims`` with ``layers_per_stage`` layers each, pooling 4x (strided conv) between them,
    then decoder stages at the two upper rates, each after a 4x transposed-conv unpooling whose output is
    concatenated with the encoder skip and projected back to the stage width. Up/down projections are shared
    between the two directions, which keeps the seed's ~11M budget (separate weights would give ~18M).
    """

    dims: tuple[int, ...] = (128, 256, 512)
    layers_per_stage: int = 3
    pool_factor: int = 4
    qkv_proj_blocksize: int = 4
    share_projections: bool = True
    decoder_channels: tuple[int, int] = (128, 96)


class _Backbone(nn.Module):
    """Shared parts of the backbones: stem, decoder, kernel selection and activation checkpointing."""

    config_class: type[BackboneConfig]

    def __init__(self, config: BackboneConfig, d_model: int, d_out_tokens: int):
        super().__init__()
        self.config = config
        self.embedder = ConvSubsampling(config.in_channels, d_model, config.stem_channels)
        self.decoder = SampleDecoder(d_out_tokens, config.stem_channels, config.decoder_channels)
        self.kernel = AUTO
        self.gradient_checkpointing = False
        self.compiled = False

    #: The input length must be a multiple of this.
    sample_multiple = 4
    #: Tokens per sample of :meth:`encode`'s output.
    token_stride = 4

    @property
    def out_channels(self) -> int:
        """Width of the per-sample features :meth:`forward` returns."""
        return self.config.decoder_channels[-1]

    def set_kernel(self, kernel: str) -> None:
        """Selects the mLSTM kernel for this backbone (``"auto"`` or a name from ``kernels.KNOWN_KERNELS``)."""
        self.kernel = validate_kernel_name(kernel)

    def set_compile(self, enabled: bool = True) -> None:
        """Runs the mLSTM layers through ``torch.compile`` (a run-time setting, never saved).

        Everything in a layer except the mLSTM kernel call is compiled, which fuses the element-wise chains
        (norms, gates, conv, residual) into few GPU kernels and recomputes cheap ones in the backward pass
        instead of storing them. All layers share one compiled function (one compilation per layer width and
        input shape). The first call at a new shape compiles (tens of seconds); use it for training and long
        annotate runs on GPUs. Outputs equal the eager ones within float rounding.
        """
        self.compiled = bool(enabled)

    def kernel_for(self, layer: BiMLSTMLayer, batch: int, device: torch.device) -> str:
        """The mLSTM kernel ``layer`` runs for ``batch`` windows on ``device``: this backbone's choice resolved by
        :func:`seisbench_xlstm.kernels.resolve_kernel`, for a call that holds both directions of every window and
        head."""
        return resolve_kernel(self.kernel, device, sequences=2 * batch * layer.config.num_heads)

    def _run_layer(self, layer: BiMLSTMLayer, x: torch.Tensor) -> torch.Tensor:
        # The kernel is resolved here, outside the compiled function, so that the layer knows which kernel runs
        # (and lays out q, k, v at its head dim, see bimlstm.mlstm_branches) without reading the environment.
        kernel = self.kernel_for(layer, x.shape[0], x.device)
        if self.compiled:  # the compiled function bypasses the layer's module hooks
            allow_recompiles()
            # contiguous: inputs that differ only in strides (a transposed stem or pool output vs. a linear output)
            # would each compile a variant of their own
            run, args = _one_thread_at_a_time(compiled_layer_forward()), (layer, x.contiguous(), kernel)
        else:
            run, args = layer, (x, kernel)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False)
        return run(*args)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"Expected input (batch, {self.config.in_channels}, samples), got shape {tuple(x.shape)}."
            )
        if x.shape[-1] % self.sample_multiple:
            raise ValueError(f"Input length {x.shape[-1]} is not a multiple of {self.sample_multiple} samples.")

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Waveform ``(batch, channels, samples)`` to tokens ``(batch, samples/4, d_model)`` and stem skips."""
        self.check_input(x)
        return self.embedder(x)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Encoded tokens to per-sample features ``(batch, out_channels, samples)``."""
        return self.decoder(tokens, skips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        :param x: waveforms ``(batch, in_channels, samples)``, samples a multiple of :attr:`sample_multiple`
        :return: features ``(batch, out_channels, samples)`` (an empty batch gives an empty batch, as PhaseNet's does)
        """
        if x.shape[0] == 0:
            self.check_input(x)
            return x.new_zeros(0, self.out_channels, x.shape[-1])
        tokens, skips = self.embed(x)
        return self.decode(self.encode(tokens), skips)


class SequentialBackbone(_Backbone):
    """Deep sequential bidirectional mLSTM stack (see :class:`SequentialBackboneConfig`)."""

    config_class = SequentialBackboneConfig

    def __init__(self, config: SequentialBackboneConfig | None = None):
        config = config or SequentialBackboneConfig()
        super().__init__(config, config.d_model, config.d_model)
        layer_config = config.layer_config(
            config.d_model, config.qkv_proj_blocksize, config.share_projections, config.num_layers
        )
        self.layers = nn.ModuleList(BiMLSTMLayer(layer_config) for _ in range(config.num_layers))
        self.final_norm = LayerNorm(ndim=config.d_model, weight=True, bias=False)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(batch, tokens, d_model)`` through all layers, ``(batch, tokens, d_model)``."""
        for layer in self.layers:
            tokens = self._run_layer(layer, tokens)
        return self.final_norm(tokens)


class UNetBackbone(_Backbone):
    """xLSTM U-Net (see :class:`UNetBackboneConfig`)."""

    config_class = UNetBackboneConfig

    def __init__(self, config: UNetBackboneConfig | None = None):
        config = config or UNetBackboneConfig()
        dims = config.dims
        super().__init__(config, dims[0], dims[0])
        n_stages = len(dims)
        n_mlstm_stages = 2 * n_stages - 1
        blocks = n_mlstm_stages * config.layers_per_stage

        def stage(d: int) -> nn.ModuleList:
            layer_config = config.layer_config(d, config.qkv_proj_blocksize, config.share_projections, blocks)
            return nn.ModuleList(BiMLSTMLayer(layer_config) for _ in range(config.layers_per_stage))

        p = config.pool_factor
        self.encoder_stages = nn.ModuleList(stage(d) for d in dims)
        self.pools = nn.ModuleList(nn.Conv1d(dims[j], dims[j + 1], p, stride=p) for j in range(n_stages - 1))
        self.unpools = nn.ModuleList(
            nn.ConvTranspose1d(dims[j + 1], dims[j], p, stride=p) for j in reversed(range(n_stages - 1))
        )
        self.skip_fusions = nn.ModuleList(nn.Linear(2 * dims[j], dims[j]) for j in reversed(range(n_stages - 1)))
        self.decoder_stages = nn.ModuleList(stage(dims[j]) for j in reversed(range(n_stages - 1)))
        self.final_norm = LayerNorm(ndim=dims[0], weight=True, bias=False)
        self.sample_multiple = self.token_stride * p ** (n_stages - 1)

    def _run_stage(self, stage: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for layer in stage:
            x = self._run_layer(layer, x)
        return x

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(batch, tokens, dims[0])`` to ``(batch, tokens, dims[0])`` through the U-Net."""
        skips = []
        x = tokens
        for j, stage in enumerate(self.encoder_stages):
            x = self._run_stage(stage, x)
            if j < len(self.pools):
                skips.append(x)
                x = self.pools[j](x.transpose(1, 2)).transpose(1, 2)
        for unpool, fuse, stage in zip(self.unpools, self.skip_fusions, self.decoder_stages):
            skip = skips.pop()
            x = unpool(x.transpose(1, 2)).transpose(1, 2)
            x = self._run_stage(stage, fuse(torch.cat([x, skip], dim=-1)))
        return self.final_norm(x)


#: Compiled variants of the layer function before dynamo falls back to running it eagerly (its default, 8, is
#: reached by a U-Net's three widths at three batch shapes: an annotate call's full, last and warm-up batches).
RECOMPILE_LIMIT = 64


def allow_recompiles() -> None:
    """Raises dynamo's recompile limit to :data:`RECOMPILE_LIMIT` in the calling thread. torch keeps such settings per
    thread, and SeisBench's ``annotate`` runs the model in worker threads: a limit raised once in another thread
    left annotate with the default 8, after which the compiled layers silently ran eagerly."""
    import torch._dynamo

    if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT


#: ``torch.compile``'s mode for the layers: ``"default"``, or e.g. ``"max-autotune-no-cudagraphs"`` (inductor times
#: its matrix-product templates against cuBLAS and tunes the launch settings of its element-wise and reduction
#: kernels; compiles take minutes). A benchmark switch (``pretrain_speed.py --setting backbones.COMPILE_MODE=...``).
COMPILE_MODE = "default"


def compiled_layer_forward():
    """``BiMLSTMLayer.forward`` through ``torch.compile`` in :data:`COMPILE_MODE`, shared by every layer of every
    backbone.

    Shapes are static (``dynamic=False``: the fastest kernels; training and annotate use few shapes). Each layer
    width, batch shape and grad mode is one compiled variant (callers raise the recompile limit with
    :func:`allow_recompiles`).
    """
    return _compiled_layer_forward(COMPILE_MODE)


#: Held by every compiled layer call. torch marks FX tracing with one flag for the whole process, and a compiled
#: function called while it is set raises "Detected that you are using FX to symbolically trace a dynamo-optimized
#: function": a layer compiling in one thread broke compiled calls in others (annotate with two batches in flight,
#: compiled U-Net, H200, 2026-11-30). Calls only launch GPU work, so taking turns costs little.
_COMPILED_CALLS = threading.RLock()


def _one_thread_at_a_time(run):
    def call(*args):
        with _COMPILED_CALLS:
            return run(*args)
    return call


@lru_cache(maxsize=None)
def _compiled_layer_forward(mode: str):
    return torch.compile(BiMLSTMLayer.forward, dynamic=False, mode=mode)


BACKBONES: dict[str, type[_Backbone]] = {"sequential": SequentialBackbone, "unet": UNetBackbone}


def build_backbone(name: str, config: dict | BackboneConfig | None = None) -> _Backbone:
    """Builds a backbone by name (``"sequential"`` or ``"unet"``) from a config object or dict."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Available: {sorted(BACKBONES)}.")
    cls = BACKBONES[name]
    if not isinstance(config, BackboneConfig):
        config = cls.config_class.from_dict(config)
    elif not isinstance(config, cls.config_class):
        raise TypeError(f"Backbone {name!r} needs a {cls.config_class.__name__}, got {type(config).__name__}.")
    return cls(config)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
