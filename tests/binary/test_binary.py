"""Binary layers: quantizers and layers against numpy, training keeps latent weights, exact int8 export."""

import os

import numpy as np
import pytest

from tests.binary.int8_check import ALPHA_RTOL, check_int8_export
from tests.conftest import CALIBRATION, HELDOUT, error_lines, run_tool
from tfcompress.binary.layers import BinaryActivation, BinaryConv2D, BinaryDense, ste_sign, stochastic_sign

FLOAT_TOL = 1e-5
STOCHASTIC_DRAWS = 4000
STOCHASTIC_TOL = 0.03  # About 4 standard deviations of a frequency over 4,000 draws.


def _np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def test_ste_sign_values_and_htanh_gradient():
    import tensorflow as tf
    x = tf.constant([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ste_sign(x)
    np.testing.assert_array_equal(y.numpy(), _np_sign(x.numpy()))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), (np.abs(x.numpy()) <= 1).astype(np.float32))


def test_stochastic_sign_follows_hard_sigmoid():
    import keras
    w = np.array([-1.5, -0.5, 0.0, 0.6, 2.0], np.float32)
    gen = keras.random.SeedGenerator(0)
    draws = np.stack([np.asarray(stochastic_sign(w, gen)) for _ in range(STOCHASTIC_DRAWS)])
    assert set(np.unique(draws)) <= {-1.0, 1.0}
    np.testing.assert_allclose((draws == 1).mean(0), np.clip((w + 1) / 2, 0, 1), atol=STOCHASTIC_TOL)


def _im2col_conv(x, k, stride=1):
    """Valid NHWC convolution by explicit loops (the reference)."""
    n, h, w, _ = x.shape
    kh, kw, _, co = k.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("mode", ["binaryconnect", "bwn", "xnor"])
def test_binary_conv_matches_numpy(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    layer = BinaryConv2D(4, 3, strides=2, mode=mode, use_bias=True)
    layer.build(x.shape)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    layer.set_weights([kernel, bias])
    wb = _np_sign(kernel) * (np.abs(kernel).mean(axis=(0, 1, 2)) if mode != "binaryconnect" else 1.0)
    if mode == "xnor":
        k_map = _im2col_conv(np.abs(x).mean(-1, keepdims=True), np.full((3, 3, 1, 1), 1 / 9), stride=2)
        expected = _im2col_conv(_np_sign(x), wb, stride=2) * k_map + bias
    else:
        expected = _im2col_conv(x, wb, stride=2) + bias
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=FLOAT_TOL, atol=FLOAT_TOL)


@pytest.mark.parametrize("mode", ["bwn", "xnor"])
def test_binary_dense_matches_numpy(mode):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    layer = BinaryDense(3, mode=mode, use_bias=False)
    layer.build(x.shape)
    kernel = rng.normal(size=(6, 3)).astype(np.float32)
    layer.set_weights([kernel])
    wb = _np_sign(kernel) * np.abs(kernel).mean(axis=0)
    expected = (_np_sign(x) @ wb) * np.abs(x).mean(-1, keepdims=True) if mode == "xnor" else x @ wb
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=FLOAT_TOL, atol=FLOAT_TOL)


@pytest.fixture(scope="module")
def trained_bwn(tmp_path_factory):
    """A CNN built from binary layers in the recommended order, trained on 600 unshipped digits (.keras)."""
    import keras
    from tfcompress.keras.train import TrainConfig, fit
    from tfcompress.evaluate.zoo import digits_training_set
    from tfcompress.io.atomic import save_keras
    keras.utils.set_random_seed(0)
    x, y = digits_training_set(600)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((32, 32, 3)), layers.Conv2D(16, 3, padding="same", activation="relu", name="first"),
        layers.MaxPooling2D(2),
        layers.BatchNormalization(name="bn1"), BinaryActivation(name="act1"),
        BinaryConv2D(32, 3, padding="same", mode="bwn", use_bias=False, name="bconv"), layers.MaxPooling2D(2),
        layers.BatchNormalization(name="bn2"), layers.Flatten(),
        BinaryDense(32, mode="bwn", name="bdense"), layers.BatchNormalization(name="bn3"), layers.ReLU(),
        layers.Dense(10, activation="softmax", name="out")], name="bwn_cnn")
    start = model.get_layer("bconv").kernel.numpy().copy()
    fit(model, x, y, TrainConfig(epochs=8, alpha=1.0, verbose=0))
    latent = model.get_layer("bconv").kernel.numpy()
    # Training updated the latent float weights (not +-1 values) and kept them.
    assert not np.allclose(latent, start) and len(np.unique(latent)) > 100
    path = str(tmp_path_factory.mktemp("binary") / "bwn.keras")
    save_keras(model, path)
    return path


def test_binary_weight_model_converts_exactly_and_runs_in_litert(trained_bwn, tmp_path):
    from tfcompress.io.keras_models import load_keras
    tflite, packed = tmp_path / "bwn.tflite", tmp_path / "bwn.tfc"
    proc = run_tool("convert", f"--input={trained_bwn}", f"--output={tflite}", "--quantize=int8",
                    f"--calibration_images={CALIBRATION}", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = load_keras(trained_bwn)
    checked = dict(check_int8_export(tflite.read_bytes(), model))
    assert set(checked) == {"bconv", "bdense"} and max(checked.values()) <= ALPHA_RTOL
    proc = run_tool("eval", f"--model={tflite}", f"--images={HELDOUT}", f"--reference={trained_bwn}", "--json",
                    "--runs=50")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["top1"] >= 0.85 and result["agreement_top1"] >= 0.95, result
    proc = run_tool("pack", f"--input={tflite}", f"--output={packed}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The 4,608 binary conv weights take one bit each in the packed file (plus a small header).
    binary = 3 * 3 * 16 * 32 + 8 * 8 * 32 * 32
    other = sum(int(np.prod(v.shape)) for v in model.weights) - binary
    assert os.path.getsize(packed) < binary / 8 + 4 * other + 4096


def test_binarize_command_and_bad_layer_type(tmp_path):
    out = tmp_path / "b.keras"
    proc = run_tool("binarize", f"--output={out}", "--mode=binaryconnect", "--epochs=1", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "binary weights" in proc.stdout
    from tfcompress.io.keras_models import load_keras
    model = load_keras(str(out))
    kinds = {type(l).__name__ for l in model.layers}
    assert "BinaryConv2D" in kinds and "BinaryDense" in kinds
    assert type(model.get_layer("conv2d")).__name__ == "Conv2D"  # The first layer stays float.
    bad = tmp_path / "bad.keras"
    proc = run_tool("binarize", f"--output={bad}", "--layers=depthwise_conv2d", "--epochs=1", "--noprogress")
    assert proc.returncode == 1 and "DepthwiseConv2D, which has no binary form" in error_lines(proc)[0]
    assert not bad.exists()


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
