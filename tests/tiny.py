"""Tiny backbone configurations for fast CPU tests."""

TINY_SEQUENTIAL = dict(d_model=32, num_layers=2, qkv_proj_blocksize=4, stem_channels=[8, 16], decoder_channels=[16, 16])
TINY_UNET = dict(dims=[16, 32, 64], layers_per_stage=1, stem_channels=[8, 16], decoder_channels=[16, 16])


def hydra_value(v) -> str:
    """A config value as a Hydra command-line value (lists as ``[a,b]``)."""
    return "[" + ",".join(str(x) for x in v) + "]" if isinstance(v, (list, tuple)) else str(v)
