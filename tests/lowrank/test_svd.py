"""Low-rank factorization: exact at full rank, Eckart-Young at rank r, and a model that converts to TFLite."""

import sys

import numpy as np
import pytest

from tests.conftest import KERAS_MODEL
from tfcompress.errors import TfcError
from tfcompress.lowrank.svd import LowRankConfig, choose_rank, factorize

# Factor products reorder float32 sums.
FACTOR_ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    import keras
    return keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)


def _images(n=16):
    return np.random.default_rng(0).random((n, 32, 32, 3), np.float32)


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_full_rank_is_exact(model, mode):
    result = factorize(model, LowRankConfig(rank=10_000, conv_mode=mode, layers=("conv2d_1", "conv2d_6", "dense")))
    assert set(result.ranks) == {"conv2d_1", "conv2d_6", "dense"}
    assert "conv2d_1_svd" in [l.name for l in result.model.layers]
    np.testing.assert_allclose(result.model.predict(_images(), verbose=0), model.predict(_images(), verbose=0),
                               atol=FACTOR_ATOL)


def test_strided_spatial_svd_is_exact_at_full_rank():
    import keras
    inp = keras.Input((9, 9, 4))
    out = keras.layers.Conv2D(5, 3, strides=2, padding="same", activation="relu", name="c")(inp)
    net = keras.Model(inp, out)
    net.set_weights([np.random.default_rng(1).standard_normal(w.shape).astype(np.float32) for w in net.get_weights()])
    result = factorize(net, LowRankConfig(rank=100, conv_mode="spatial"))
    x = np.random.default_rng(2).standard_normal((3, 9, 9, 4)).astype(np.float32)
    np.testing.assert_allclose(result.model.predict(x, verbose=0), net.predict(x, verbose=0), atol=FACTOR_ATOL)
    assert result.model.get_layer("c_svd").kernel.shape == (3, 1, 4, 12)
    assert result.model.get_layer("c").kernel.shape == (1, 3, 12, 5)


def test_truncated_dense_is_the_best_rank_r_approximation(model):
    import keras
    w = keras.ops.convert_to_numpy(model.get_layer("dense").kernel).astype(np.float64)
    result = factorize(model, LowRankConfig(rank=5, layers=("dense",)))
    a = keras.ops.convert_to_numpy(result.model.get_layer("dense_svd").kernel).astype(np.float64)
    b = keras.ops.convert_to_numpy(result.model.get_layer("dense").kernel).astype(np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(a @ b, (u[:, :5] * s[:5]) @ vt[:5], atol=1e-5)
    # Eckart-Young: the error is exactly the discarded singular values.
    assert np.linalg.norm(w - a @ b) == pytest.approx(np.sqrt(np.sum(s[5:] ** 2)), rel=1e-4)


def test_rank_selection():
    s = np.array([3.0, 2.0, 1.0])
    assert choose_rank(s, (10, 10), LowRankConfig(energy=0.9)) == 2   # 13/14 >= 0.9
    assert choose_rank(s, (10, 10), LowRankConfig(energy=0.95)) == 3  # 14/14
    assert choose_rank(s, (10, 10), LowRankConfig(param_ratio=0.25)) == 1  # r * 20 <= 25
    assert choose_rank(s, (3, 3), LowRankConfig(energy=1.0)) == 1    # Larger factors are never chosen.


def test_param_ratio_is_respected_and_model_converts(model, tmp_path):
    import keras
    from tfcompress.export.litert import LiteRTRunner
    from tfcompress.export.tflite import TfliteConfig, convert_tflite
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import freeze_keras_model
    result = factorize(model, LowRankConfig(param_ratio=0.5))
    for name in result.ranks:
        before = int(np.prod(model.get_layer(name).kernel.shape))
        after = sum(int(np.prod(result.model.get_layer(n).kernel.shape)) for n in (name, f"{name}_svd"))
        assert after <= 0.5 * before, name
    result.model.save(tmp_path / "f.keras")
    again = keras.saving.load_model(tmp_path / "f.keras", safe_mode=True)
    frozen, _ = optimize(freeze_keras_model(again, "lowrank"))
    flatbuffer = convert_tflite(frozen, TfliteConfig(quantize="none")).flatbuffer
    x = _images(4)
    np.testing.assert_allclose(LiteRTRunner(flatbuffer).predict(x), again.predict(x, verbose=0), atol=FACTOR_ATOL)


def test_bad_requests(model):
    with pytest.raises(TfcError, match="--energy must be in"):
        LowRankConfig(energy=0.0)
    with pytest.raises(TfcError, match="--param_ratio must be in"):
        LowRankConfig(param_ratio=1.0)
    with pytest.raises(TfcError, match="cannot factorize batch_normalization"):
        factorize(model, LowRankConfig(layers=("batch_normalization",)))
    import keras
    square = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])  # Rank-1 factors: 4 weights, as many.
    with pytest.raises(TfcError, match="no layer gets smaller"):
        factorize(square, LowRankConfig(energy=1.0))


def test_cli_writes_a_factorized_model_and_refuses_bad_flags(tmp_path):
    import os
    import subprocess
    import keras
    from tests.conftest import ROOT
    tool = os.path.join(ROOT, "tools", "lowrank.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "lr.keras"
    proc = subprocess.run([sys.executable, tool, f"--output={out}", "--layers=dense,conv2d_7", "--rank=8",
                           "--noprogress"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "not fine-tuned" in proc.stdout and "top-1 agreement" in proc.stdout
    names = [l.name for l in keras.saving.load_model(out, safe_mode=True).layers]
    assert "dense_svd" in names and "conv2d_7_svd" in names
    bad = subprocess.run([sys.executable, tool, f"--output={tmp_path}/bad.keras", "--energy=1.5"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert bad.returncode == 1 and [l for l in bad.stderr.splitlines() if l.startswith("error:")] == [
        "error: --energy must be in (0, 1], got 1.5"]
    assert not (tmp_path / "bad.keras").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
