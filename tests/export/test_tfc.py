"""The packed .tfc format: Huffman coding against its bounds, exact round trips, real savings, corrupt files."""

import gzip
import os

import numpy as np
import pytest

from tests.conftest import CALIBRATION, HELDOUT, error_lines, run_tool
from tfcompress.errors import TfcError
from tfcompress.export import entropy, tfc


def test_huffman_round_trip_and_optimality():
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.25, 20000) - 1, 31)
    data = entropy.encode(symbols, 32)
    reader = entropy.Reader(data, "stream")
    np.testing.assert_array_equal(entropy.decode(reader, len(symbols)), symbols)
    assert reader.pos == len(data) and entropy.stream_size(symbols, 32) == len(data)
    # A Huffman code's mean length lies within one bit above the empirical entropy.
    p = np.bincount(symbols, minlength=32) / len(symbols)
    h = -np.sum(p[p > 0] * np.log2(p[p > 0]))
    lengths = entropy.code_lengths(np.bincount(symbols, minlength=32))
    mean_length = float(np.sum(p * lengths))
    assert h <= mean_length < h + 1
    # Kraft equality: the code is complete.
    assert np.sum(2.0 ** -lengths[lengths > 0]) == 1.0


def test_code_lengths_are_limited():
    counts = np.array([2 ** i for i in range(24)])  # Fibonacci-like skew: an unlimited code would be 23 bits deep.
    lengths = entropy.code_lengths(counts)
    assert lengths.max() == entropy.MAX_CODE_LENGTH
    assert np.sum(2.0 ** -lengths) <= 1.0


def test_gap_symbols_round_trip():
    positions = np.array([0, 3, 4, 300, 301, 1000])
    for bits in (1, 3, 8):
        symbols = tfc._gap_symbols(positions, bits)  # pylint: disable=protected-access
        gaps = tfc._gaps(symbols, len(positions), (1 << bits) - 1, "x")  # pylint: disable=protected-access
        np.testing.assert_array_equal(np.cumsum(gaps + 1) - 1, positions)


@pytest.fixture(scope="module")
def sparse_clustered(tmp_path_factory):
    """The shipped model with 90% of its kernel weights zeroed and 16 clusters per kernel, as .keras."""
    import keras
    from tfcompress.cluster import kmeans
    from tfcompress.io.atomic import save_keras
    from tfcompress.io.keras_models import load_keras
    from tests.conftest import KERAS_MODEL
    model = load_keras(KERAS_MODEL)
    for layer in model.layers:
        for v in layer.trainable_weights:
            if v.name == "kernel":
                w = v.numpy()
                w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0.0
                v.assign(w)
    result, _ = kmeans.cluster_model(model, kmeans.ClusterConfig(clusters=16))
    path = str(tmp_path_factory.mktemp("tfc") / "sparse.keras")
    save_keras(result, path)
    del keras
    return path


def test_float_flatbuffer_round_trips_and_shrinks(sparse_clustered):
    from tfcompress.export.tflite import keras_float_flatbuffer
    from tfcompress.io.keras_models import load_keras
    flatbuffer = keras_float_flatbuffer(load_keras(sparse_clustered))
    packed = tfc.pack(flatbuffer)
    assert tfc.unpack(packed.data) == flatbuffer
    assert packed.buffers and all(b.mode == "sparse" for b in packed.buffers if b.length > 4096)
    # Sparse offsets + 4-bit indices beat gzip -9 of the same flatbuffer clearly.
    assert len(packed.data) < 0.7 * len(gzip.compress(flatbuffer, 9))


def test_bit_patterns_survive_negative_zero_and_nan(sparse_clustered):
    from tfcompress.export.tflite import keras_float_flatbuffer
    from tfcompress.io.keras_models import load_keras
    flatbuffer = bytearray(keras_float_flatbuffer(load_keras(sparse_clustered)))
    offset, length, dtype = max(tfc.weight_buffers(bytes(flatbuffer)), key=lambda b: b[1])
    assert dtype == 0  # float32
    values = np.frombuffer(flatbuffer, np.float32, length // 4, offset).copy()
    zeros = np.flatnonzero(values == 0)
    values[zeros[:5]] = -0.0  # Numerically zero, but not the same bytes.
    values[zeros[5]] = np.frombuffer(np.uint32(0x7FC00001).tobytes(), np.float32)[0]  # A NaN with a payload.
    flatbuffer[offset:offset + length] = values.tobytes()
    assert tfc.unpack(tfc.pack(bytes(flatbuffer)).data) == bytes(flatbuffer)


def test_unpack_gives_back_the_convert_output(sparse_clustered, tmp_path):
    tflite, packed, unpacked = tmp_path / "m.tflite", tmp_path / "m.tfc", tmp_path / "u.tflite"
    proc = run_tool("convert", f"--input={sparse_clustered}", f"--output={tflite}", "--quantize=int8", "--per_tensor",
                    f"--calibration_images={CALIBRATION}", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_tool("pack", f"--input={tflite}", f"--output={packed}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ".tfc packed" in proc.stdout and ".tflite gzip -9" in proc.stdout
    proc = run_tool("unpack", f"--input={packed}", f"--output={unpacked}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert unpacked.read_bytes() == tflite.read_bytes()
    assert os.path.getsize(packed) < len(gzip.compress(tflite.read_bytes(), 9))
    # The unpacked file runs in LiteRT.
    proc = run_tool("eval", f"--model={unpacked}", f"--images={HELDOUT}", "--runs=50")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "trailing"])
def test_corrupt_tfc_is_refused(sparse_clustered, tmp_path, damage):
    from tfcompress.export.tflite import keras_float_flatbuffer
    from tfcompress.io.keras_models import load_keras
    data = bytearray(tfc.pack(keras_float_flatbuffer(load_keras(sparse_clustered))).data)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0x5A
    elif damage == "magic":
        data[:4] = b"ZZZZ"
    else:
        data += b"\0"
    with pytest.raises(TfcError, match="corrupt|truncated|not a .tfc"):
        tfc.unpack(bytes(data), "m.tfc")
    if damage != "truncate":
        return  # The command's handling is the same for every damage: checked once.
    bad, out = tmp_path / "bad.tfc", tmp_path / "out.tflite"
    bad.write_bytes(bytes(data))
    proc = run_tool("unpack", f"--input={bad}", f"--output={out}")
    assert proc.returncode == 1 and len(error_lines(proc)) == 1, proc.stderr[-1000:]
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
