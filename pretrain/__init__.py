"""Self-supervised pretraining of the seisbench-xlstm backbones (``python -m pretrain experiment=<name>``).

Two recipes (masked reconstruction; contrastive + vector quantisation) run with Lightning, configured with Hydra.
See docs/pretrain.md. This package uses the library's public API only; the library never imports it.
"""
