"""Converts the original EQTransformer Keras models (Mousavi et al. 2020) into ``seisbench.models.EQTransformer``.

The layers are found by following the Keras graph backwards from the three output convolutions (``detector``,
``picker_P``, ``picker_S``), never by their automatic numbering (which differs between the two files):

    input -> 7 x (Conv1D, MaxPooling1D)                      encoder
          -> 7 x residual block (BN, ReLU, SpatialDropout, Conv1D, BN, ReLU, SpatialDropout, Conv1D, Add)
          -> n x (Bidirectional LSTM, Conv1D k=1, BN)          n = 2 (EqT_model2.h5) or 3 (EqT_model.h5)
          -> 2 x transformer (SeqSelfAttention, Add, LayerNormalization, FeedForward, Add, LayerNormalization)
          -> detection decoder (7 x (UpSampling1D [, Cropping1D], Conv1D)) -> detector
          -> per phase: LSTM -> SeqSelfAttention (width 3) -> decoder -> picker_P / picker_S

Layouts: a Keras Conv1D kernel is ``(kernel, in, out)``, torch's ``(out, in, kernel)``; a Keras LSTM has one bias,
put into torch's ``bias_ih`` with ``bias_hh`` zero (their sum is what both compute); the gate order (i, f, c, o)
is the same. The originals take components in the order E, N, Z; the first convolution's input channels are
reordered so that the converted model takes SeisBench's Z, N, E.

The gate activation decides the SeisBench variant: ``recurrent_activation="sigmoid"`` (EqT_model2.h5, Keras 2.3)
is ``original_compatible="non-conservative"``, ``"hard_sigmoid"`` (EqT_model.h5, Keras 2.2.4) is
``"conservative"`` (SeisBench's hard sigmoid is ``clip(0.2 x + 0.5, 0, 1)``, as in Keras 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .keras_h5 import KerasFormatError, KerasModelFile

__all__ = ["EqTStructure", "convert_eqtransformer", "eqtransformer_structure", "ORIGINAL_ORDER"]

#: Component order of the original models' input channels.
ORIGINAL_ORDER = "ENZ"
N_CONV = 7


@dataclass
class EqTStructure:
    """Layer names of an EQTransformer Keras graph, in SeisBench's module order."""

    encoder: list[str] = field(default_factory=list)
    res_blocks: list[tuple[str, str, str, str]] = field(default_factory=list)  # (bn1, conv1, bn2, conv2)
    lstm_blocks: list[tuple[str, str, str]] = field(default_factory=list)  # (bidirectional, conv, bn)
    transformers: list[tuple[str, str, str, str]] = field(default_factory=list)  # (attention, ln1, ff, ln2)
    decoders: dict[str, list[str]] = field(default_factory=dict)  # output name -> convs, top first
    crops: dict[str, list[int]] = field(default_factory=dict)  # output name -> decoder steps with a (1, 1) crop
    pick_branches: dict[str, tuple[str, str]] = field(default_factory=dict)  # output -> (lstm, attention)
    gate_activation: str = ""


def _decoder(m: KerasModelFile, out: str) -> tuple[list[str], list[int], str]:
    """Decoder convs (first to last), steps cropped by (1, 1), and the layer feeding the decoder."""
    convs, crops = [], []
    node = m.source(m.expect(out, "Conv1D").name)
    while node.class_name == "Conv1D":
        convs.insert(0, node.name)
        up = m.source(node.name)
        cropped = up.class_name == "Cropping1D"
        if cropped:
            if tuple(up.config.get("cropping", (1, 1))) != (1, 1):
                raise KerasFormatError(f"{up.name}: cropping {up.config.get('cropping')}, expected (1, 1)")
            up = m.source(up.name)
        if up.class_name != "UpSampling1D":
            raise KerasFormatError(f"decoder of {out}: {node.name} is fed by a {up.class_name}, not UpSampling1D")
        crops.append(cropped)
        node = m.source(up.name)
    if len(convs) != N_CONV:
        raise KerasFormatError(f"decoder of {out}: {len(convs)} convolutions, expected {N_CONV}")
    crops = [i for i, c in enumerate(reversed(crops)) if c]
    return convs, crops, node.name


def _transformer(m: KerasModelFile, top: str) -> tuple[tuple[str, str, str, str], str]:
    """(attention, ln1, ff, ln2) of the transformer whose output is ``top``, and the layer feeding it."""
    ln2 = m.expect(top, "LayerNormalization")
    add2 = m.expect(m.source(ln2.name).name, "Add")
    ff = next((m[n] for n in add2.inbound if m[n].class_name == "FeedForward"), None)
    if ff is None:
        raise KerasFormatError(f"{add2.name}: no FeedForward input")
    ln1 = m.expect(m.source(ff.name).name, "LayerNormalization")
    if sorted(add2.inbound) != sorted([ln1.name, ff.name]):
        raise KerasFormatError(f"{add2.name}: inputs {add2.inbound}, expected {ln1.name} and {ff.name}")
    add1 = m.expect(m.source(ln1.name).name, "Add")
    att = next((m[n] for n in add1.inbound if m[n].class_name == "SeqSelfAttention"), None)
    if att is None:
        raise KerasFormatError(f"{add1.name}: no SeqSelfAttention input")
    x = m.source(att.name).name
    if sorted(add1.inbound) != sorted([x, att.name]):
        raise KerasFormatError(f"{add1.name}: inputs {add1.inbound}, expected {x} and {att.name}")
    return (att.name, ln1.name, ff.name, ln2.name), x


def eqtransformer_structure(m: KerasModelFile) -> EqTStructure:
    """Finds every layer of an EQTransformer graph; raises :class:`KerasFormatError` where the graph differs."""
    s = EqTStructure()
    convs, crops, top = _decoder(m, "detector")
    s.decoders["detector"], s.crops["detector"] = convs, crops
    node = top
    for _ in range(2):
        t, node = _transformer(m, node)
        s.transformers.insert(0, t)
    # BiLSTM blocks: BN <- Conv1D(k=1) <- Bidirectional
    while m[node].class_name == "BatchNormalization" and m.source(node).class_name == "Conv1D":
        conv = m.source(node)
        bi = m.source(conv.name)
        if bi.class_name != "Bidirectional":
            break
        s.lstm_blocks.insert(0, (bi.name, conv.name, node))
        node = m.source(bi.name).name
    if not s.lstm_blocks:
        raise KerasFormatError(f"no bidirectional LSTM blocks found before {node}")
    # residual blocks: Add(prev, conv2 <- dropout <- relu <- bn2 <- conv1 <- dropout <- relu <- bn1 <- prev)
    while m[node].class_name == "Add":
        add = m[node]
        conv2 = next((m[n] for n in add.inbound if m[n].class_name == "Conv1D"), None)
        if conv2 is None or len(add.inbound) != 2:
            raise KerasFormatError(f"{add.name}: not a residual block output")
        prev = next(n for n in add.inbound if n != conv2.name)
        chain, x = [], conv2
        for expected in ("SpatialDropout1D", "Activation", "BatchNormalization", "Conv1D",
                         "SpatialDropout1D", "Activation", "BatchNormalization"):
            x = m.source(x.name)
            if x.class_name != expected:
                raise KerasFormatError(f"residual block {add.name}: found {x.class_name} {x.name}, expected {expected}")
            chain.append(x.name)
        if m.source(x.name).name != prev:
            raise KerasFormatError(f"residual block {add.name}: branch does not start at {prev}")
        s.res_blocks.insert(0, (chain[6], chain[3], chain[2], conv2.name))
        node = prev
    # encoder: (Conv1D, MaxPooling1D) pairs down to the input
    while m[node].class_name == "MaxPooling1D":
        conv = m.source(node)
        if conv.class_name != "Conv1D":
            raise KerasFormatError(f"encoder: {node} is fed by a {conv.class_name}")
        s.encoder.insert(0, conv.name)
        node = m.source(conv.name).name
    if m[node].class_name != "InputLayer" or len(s.encoder) != N_CONV or len(s.res_blocks) != N_CONV:
        raise KerasFormatError(
            f"encoder reached {node} ({m[node].class_name}) after {len(s.encoder)} convolutions and "
            f"{len(s.res_blocks)} residual blocks; expected the input after {N_CONV} of each"
        )
    transformer_out = s.transformers[-1][3]
    for out in ("picker_P", "picker_S"):
        convs, crops, att = _decoder(m, out)
        s.decoders[out], s.crops[out] = convs, crops
        m.expect(att, "SeqSelfAttention")
        lstm = m.expect(m.source(att).name, "LSTM")
        if m.source(lstm.name).name != transformer_out:
            raise KerasFormatError(f"{out}: LSTM {lstm.name} is not fed by the transformer output")
        s.pick_branches[out] = (lstm.name, att)
    acts = {m[b].config["layer"]["config"]["recurrent_activation"] for b, _, _ in s.lstm_blocks}
    acts |= {m[lstm].config["recurrent_activation"] for lstm, _ in s.pick_branches.values()}
    if len(acts) != 1 or not acts <= {"sigmoid", "hard_sigmoid"}:
        raise KerasFormatError(f"LSTM gate activations {sorted(acts)}: expected all sigmoid or all hard_sigmoid")
    s.gate_activation = acts.pop()
    for layer in [m[n] for n in s.encoder] + [m[n] for d in s.decoders.values() for n in d]:
        if layer.config.get("padding") != "same":
            raise KerasFormatError(f"{layer.name}: padding {layer.config.get('padding')!r}, expected 'same'")
    return s


# --- weights ----------------------------------------------------------------------------------------------------------

def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _conv(sd: dict, prefix: str, layer) -> None:
    sd[f"{prefix}.weight"] = _t(layer.weight("kernel").transpose(2, 1, 0))
    sd[f"{prefix}.bias"] = _t(layer.weight("bias"))


def _bn(sd: dict, prefix: str, layer) -> None:
    n = layer.weight("moving_mean").shape[0]
    sd[f"{prefix}.weight"] = _t(layer.weight("gamma") if layer.config.get("scale", True) else np.ones(n))
    sd[f"{prefix}.bias"] = _t(layer.weight("beta") if layer.config.get("center", True) else np.zeros(n))
    sd[f"{prefix}.running_mean"] = _t(layer.weight("moving_mean"))
    sd[f"{prefix}.running_var"] = _t(layer.weight("moving_variance"))
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)


def _lstm(sd: dict, names: tuple[str, str, str, str], kernel, recurrent, bias) -> None:
    w_ih, w_hh, b_ih, b_hh = names
    sd[w_ih] = _t(kernel.T)
    sd[w_hh] = _t(recurrent.T)
    sd[b_ih] = _t(bias)
    sd[b_hh] = torch.zeros(bias.shape[0])


def _attention(sd: dict, prefix: str, layer) -> None:
    for w in ("Wx", "Wt", "bh", "Wa", "ba"):
        sd[f"{prefix}.{w}"] = _t(layer.weight(f"_Add_{w}"))


def _decoder_weights(sd: dict, prefix: str, m: KerasModelFile, convs: list[str]) -> None:
    for i, name in enumerate(convs):
        _conv(sd, f"{prefix}.convs.{i}", m[name])


def eqtransformer_state_dict(m: KerasModelFile, s: EqTStructure, conservative: bool) -> dict[str, torch.Tensor]:
    """SeisBench EQTransformer state dict (input channels Z, N, E) from the Keras model ``m``."""
    sd: dict[str, torch.Tensor] = {}
    for i, name in enumerate(s.encoder):
        _conv(sd, f"encoder.convs.{i}", m[name])
    order = [ORIGINAL_ORDER.index(c) for c in "ZNE"]
    sd["encoder.convs.0.weight"] = sd["encoder.convs.0.weight"][:, order, :].contiguous()
    for i, (bn1, conv1, bn2, conv2) in enumerate(s.res_blocks):
        p = f"res_cnn_stack.members.{i}"
        _bn(sd, f"{p}.norm1", m[bn1])
        _conv(sd, f"{p}.conv1", m[conv1])
        _bn(sd, f"{p}.norm2", m[bn2])
        _conv(sd, f"{p}.conv2", m[conv2])
    for i, (bi, conv, bn) in enumerate(s.lstm_blocks):
        p = f"bi_lstm_stack.members.{i}"
        layer = m[bi]
        for direction, cell in (("forward", "cell_f"), ("backward", "cell_b")):
            ws = {k.split("/")[-1]: v for k, v in layer.weights.items() if k.split("/")[-2].startswith(direction)}
            if sorted(ws) != ["bias", "kernel", "recurrent_kernel"]:
                raise KerasFormatError(f"{bi}: {direction} LSTM weights {sorted(ws)}")
            names = tuple(f"{p}.lstm.{cell}.{w}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            _lstm(sd, names, ws["kernel"], ws["recurrent_kernel"], ws["bias"])
        _conv(sd, f"{p}.conv", m[conv])
        _bn(sd, f"{p}.norm", m[bn])
    for prefix, (att, ln1, ff, ln2) in zip(("transformer_d0", "transformer_d"), s.transformers):
        _attention(sd, f"{prefix}.attention", m[att])
        for norm, name in (("norm1", ln1), ("norm2", ln2)):
            sd[f"{prefix}.{norm}.gamma"] = _t(m[name].weight("gamma")[:, None])
            sd[f"{prefix}.{norm}.beta"] = _t(m[name].weight("beta")[:, None])
        f = m[ff]
        sd[f"{prefix}.ff.lin1.weight"] = _t(f.weight("_W1").T)
        sd[f"{prefix}.ff.lin1.bias"] = _t(f.weight("_b1"))
        sd[f"{prefix}.ff.lin2.weight"] = _t(f.weight("_W2").T)
        sd[f"{prefix}.ff.lin2.bias"] = _t(f.weight("_b2"))
    _decoder_weights(sd, "decoder_d", m, s.decoders["detector"])
    _conv(sd, "conv_d", m["detector"])
    for i, out in enumerate(("picker_P", "picker_S")):
        lstm, att = s.pick_branches[out]
        lw = m[lstm]
        if conservative:
            names = tuple(f"pick_lstms.{i}.cell_f.{w}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        else:
            names = tuple(f"pick_lstms.{i}.{w}_l0" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        _lstm(sd, names, lw.weight("kernel"), lw.weight("recurrent_kernel"), lw.weight("bias"))
        _attention(sd, f"pick_attentions.{i}", m[att])
        _decoder_weights(sd, f"pick_decoders.{i}", m, s.decoders[out])
        _conv(sd, f"pick_convs.{i}", m[out])
    return sd


def convert_eqtransformer(path: str | Path):
    """Loads an original EQTransformer ``.h5`` file as a ``seisbench.models.EQTransformer`` in eval mode.

    The variant (``original_compatible``, ``lstm_blocks``) is read from the file; the model takes 6000 samples of
    components Z, N, E and returns (detection, P, S) probabilities, each ``(batch, 6000)``.
    """
    import seisbench.models as sbm

    m = KerasModelFile(path)
    s = eqtransformer_structure(m)
    conservative = s.gate_activation == "hard_sigmoid"
    for out, crops in s.crops.items():
        if crops != [3]:
            raise KerasFormatError(f"decoder of {out} crops at steps {crops}; SeisBench's original layout crops at 3")
    shape = m["input"].config.get("batch_input_shape")
    if shape is not None and list(shape[1:]) != [6000, 3]:
        raise KerasFormatError(f"input shape {shape}, expected (None, 6000, 3)")
    model = sbm.EQTransformer(
        in_channels=3,
        in_samples=6000,
        classes=2,
        phases="PS",
        lstm_blocks=len(s.lstm_blocks),
        original_compatible="conservative" if conservative else "non-conservative",
        sampling_rate=100,
        norm="std",
    )
    sd = eqtransformer_state_dict(m, s, conservative)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise KerasFormatError(f"state dict mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise KerasFormatError(f"{k}: converted shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}")
    model.load_state_dict(sd)
    model.eval()
    return model
