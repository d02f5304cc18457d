"""Quantization-aware training: BN folding, fake-quantized weights against numpy, and the int8 export's outputs."""

import numpy as np
import pytest

from tests.conftest import FLOAT_ATOL, HELDOUT, assert_close, error_lines, run_tool, write_digits

# The int8 model must agree with the QAT model within one output quantization step (dequantized in
# float32, hence the small slack).
STEP_SLACK = 1e-3


def test_fold_batch_norm_keeps_the_function(digits):
    from tfcompress.keras.fold import fold_batch_norm
    model, x = digits
    folded, pairs = fold_batch_norm(model)
    assert len(pairs) == 8 and not [l for l in folded.layers if type(l).__name__ == "BatchNormalization"]
    assert_close(folded.predict(x[:64], verbose=0), model.predict(x[:64], verbose=0), atol=FLOAT_ATOL)


def test_quantized_kernel_is_per_channel_int8_grid():
    from tfcompress.qat.layers import QuantConv2D, QuantDepthwiseConv2D
    rng = np.random.default_rng(0)
    conv = QuantConv2D(5, 3)
    conv.build((1, 8, 8, 4))
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    conv.kernel.assign(kernel)
    q = np.asarray(conv.quantized_kernel(training=True))
    scale = np.abs(kernel).max(axis=(0, 1, 2)) / 127.0
    np.testing.assert_allclose(q, np.round(kernel / scale) * scale, rtol=1e-6, atol=1e-7)
    assert np.all(np.abs(np.round(q / scale)) <= 127)
    depthwise = QuantDepthwiseConv2D(3, depth_multiplier=2)
    depthwise.build((1, 8, 8, 4))
    dk = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
    depthwise.kernel.assign(dk)
    dq = np.asarray(depthwise.quantized_kernel(training=True))
    dscale = np.abs(dk).max(axis=(0, 1))[None, None] / 127.0  # One range per (channel, multiplier).
    np.testing.assert_allclose(dq, np.round(dk / dscale) * dscale, rtol=1e-6, atol=1e-7)


def test_prepare_structure(digits):
    from tfcompress.qat.qat import prepare_qat
    model, _ = digits
    q = prepare_qat(model)
    kinds = [type(l).__name__ for l in q.layers]
    assert "BatchNormalization" not in kinds
    assert kinds.count("QuantConv2D") == 8 and kinds.count("QuantDepthwiseConv2D") == 1
    assert kinds.count("QuantDense") == 2 and kinds[-1] == "Softmax"
    names = {l.name for l in q.layers}
    # Ranges after fused ReLUs, not before them; the logits get one; the concatenation's inputs share its range.
    assert "re_lu_fq" in names and "conv2d_fq" not in names and "probabilities_logits_fq" in names
    assert "conv2d_6_fq" not in names and "concatenate_fq" in names


@pytest.fixture(scope="module")
def lenet_logits(tmp_path_factory):
    """A LeNet-style CNN with a logits output, trained on 600 unshipped digits, and those digits as a folder."""
    import keras
    from tfcompress.keras.train import TrainConfig, fit
    from tfcompress.evaluate.zoo import digits_training_set
    from tfcompress.io.atomic import save_keras
    keras.utils.set_random_seed(0)
    x, y = digits_training_set(600)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((32, 32, 3)), layers.Conv2D(8, 3), layers.BatchNormalization(), layers.ReLU(),
        layers.MaxPooling2D(2), layers.Conv2D(16, 3, activation="relu"), layers.AveragePooling2D(2),
        layers.Flatten(), layers.Dense(32, activation="relu"), layers.Dense(10)], name="lenet_logits")
    fit(model, x, y, TrainConfig(epochs=5, alpha=1.0, verbose=0))
    root = tmp_path_factory.mktemp("qat")
    path = str(root / "lenet.keras")
    save_keras(model, path)
    return path, write_digits(root / "train", x, y)


def test_int8_export_within_one_step_of_the_qat_model(lenet_logits, tmp_path):
    import keras
    from tfcompress.data.folders import read_image_set
    from tfcompress.data.images import Preprocessing, iter_batches
    from tfcompress.export.litert import LiteRTRunner
    model_path, train = lenet_logits
    out, tflite = tmp_path / "qat.keras", tmp_path / "qat.tflite"
    proc = run_tool("qat", f"--input={model_path}", f"--output={out}", f"--train_images={train}", "--epochs=2",
                    "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_tool("convert", f"--input={out}", f"--output={tflite}", "--quantize=int8", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ranges learned in training, no image read" in proc.stdout
    qat_model = keras.saving.load_model(out, safe_mode=True)
    held = read_image_set(HELDOUT)
    x = np.concatenate(list(iter_batches(held.paths, Preprocessing(height=32, width=32, channels=3), 100)))
    runner = LiteRTRunner(tflite.read_bytes(), mean=0.0, std=255.0)
    int8 = np.concatenate([runner.predict(x[i:i + 1]) for i in range(len(x))])
    reference = qat_model.predict(x, verbose=0)
    step = runner.output["quantization"][0]
    steps = np.abs(int8 - reference) / step
    assert steps.max() <= 1.0 + STEP_SLACK, (steps.max(), np.mean(steps > 1))
    assert np.mean(int8.argmax(1) == held.labels) >= 0.9


def test_qat_model_refuses_other_modes(lenet_logits, tmp_path):
    model_path, train = lenet_logits
    out = tmp_path / "qat.keras"
    assert run_tool("qat", f"--input={model_path}", f"--output={out}", f"--train_images={train}", "--epochs=0",
                    "--noprogress").returncode == 0
    proc = run_tool("convert", f"--input={out}", f"--output={tmp_path / 'f16.tflite'}", "--quantize=float16",
                    "--noprogress")
    assert proc.returncode == 1 and "converts with --quantize=int8 only" in error_lines(proc)[0]
    assert not (tmp_path / "f16.tflite").exists()


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
