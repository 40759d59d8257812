"""Reads a Keras (2.x, HDF5) functional model file with h5py alone: the layer graph and the weights by layer.

A Keras ``.h5`` model holds the architecture as JSON in the root attribute ``model_config`` (layers with their
class, config and inbound layers) and the weights under ``model_weights/<layer>/`` with the attribute
``weight_names`` giving each weight's name (``<layer>/kernel:0``, ``<layer>/forward_lstm_1/kernel:0``, ...).
This module exposes both, so a converter can follow the graph (which layer feeds which) instead of relying on the
automatic layer numbering, which differs between files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

__all__ = ["KerasFormatError", "KerasLayer", "KerasModelFile"]


class KerasFormatError(ValueError):
    """The file is not a readable Keras HDF5 model, or its graph is not what a converter expects."""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


@dataclass
class KerasLayer:
    """One layer: name, Keras class, config, names of the layers feeding it, and its weights by short name.

    Weight short names drop the layer prefix and the ``:0`` suffix: ``kernel``, ``bias``, ``gamma``,
    ``forward_lstm_1/kernel``, ``attentionP_Add_Wt``, ...
    """

    name: str
    class_name: str
    config: dict
    inbound: list[str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def weight(self, suffix: str) -> np.ndarray:
        """The one weight whose short name ends with ``suffix`` (e.g. ``"kernel"``, ``"_Add_Wt"``)."""
        hits = [k for k in self.weights if k == suffix]
        hits = hits or [k for k in self.weights if k.endswith("/" + suffix)]
        hits = hits or [k for k in self.weights if k.endswith(suffix)]
        if len(hits) != 1:
            raise KerasFormatError(
                f"layer {self.name!r} ({self.class_name}): {len(hits)} weights match {suffix!r} "
                f"(has {sorted(self.weights)})"
            )
        return self.weights[hits[0]]


class KerasModelFile:
    """A Keras functional model read from an HDF5 file: ``layers`` by name, ``consumers`` of each layer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise KerasFormatError(f"Keras model file {self.path} does not exist")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise KerasFormatError(f"{self.path} is not a readable HDF5 file ({e})") from e
        with f:
            if "model_config" not in f.attrs:
                raise KerasFormatError(f"{self.path} has no 'model_config' attribute: not a Keras model file")
            config = json.loads(_text(f.attrs["model_config"]))
            self.keras_version = _text(f.attrs.get("keras_version", "unknown"))
            if config.get("class_name") not in ("Model", "Functional"):
                raise KerasFormatError(f"{self.path}: a {config.get('class_name')} model, expected a functional Model")
            self.layers: dict[str, KerasLayer] = {}
            for spec in config["config"]["layers"]:
                nodes = spec.get("inbound_nodes") or []
                if len(nodes) > 1:
                    raise KerasFormatError(f"layer {spec['name']!r} is called more than once; not supported")
                inbound = [n[0] for n in nodes[0]] if nodes else []
                self.layers[spec["name"]] = KerasLayer(spec["name"], spec["class_name"], spec["config"], inbound)
            group = f["model_weights"] if "model_weights" in f else f
            for name, layer in self.layers.items():
                if name not in group:
                    continue
                g = group[name]
                for wname in (_text(w) for w in g.attrs.get("weight_names", [])):
                    try:
                        arr = np.asarray(g[wname])
                    except KeyError as e:
                        raise KerasFormatError(f"{self.path}: weight {wname} listed but missing (corrupt file?)") from e
                    short = wname.split(":")[0]
                    short = short[len(name) + 1 :] if short.startswith(name + "/") else short
                    layer.weights[short] = arr
        self.consumers: dict[str, list[str]] = {n: [] for n in self.layers}
        for layer in self.layers.values():
            for src in layer.inbound:
                if src not in self.layers:
                    raise KerasFormatError(f"layer {layer.name!r} is fed by unknown layer {src!r}")
                self.consumers[src].append(layer.name)

    def __getitem__(self, name: str) -> KerasLayer:
        try:
            return self.layers[name]
        except KeyError:
            raise KerasFormatError(f"{self.path}: no layer named {name!r}") from None

    def source(self, name: str) -> KerasLayer:
        """The single layer feeding ``name`` (an error where there are none or several)."""
        inbound = self[name].inbound
        if len(inbound) != 1:
            raise KerasFormatError(f"layer {name!r} has {len(inbound)} inputs, expected one")
        return self[inbound[0]]

    def expect(self, name: str, *class_names: str) -> KerasLayer:
        """The layer ``name``, checked to be of one of ``class_names``."""
        layer = self[name]
        if layer.class_name not in class_names:
            raise KerasFormatError(
                f"{self.path}: layer {name!r} is a {layer.class_name}, expected {' or '.join(class_names)}"
            )
        return layer
