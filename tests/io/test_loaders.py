"""All four formats load to one frozen graph with the same outputs; bad and unsafe models are refused."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import MODELS, assert_close
from tfcompress.errors import TfcError
from tfcompress.graph.runner import run_graph
from tfcompress.io.loaders import load_model

X = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)


def _run(model):
    return run_graph(model.graph_def, {model.inputs[0].tensor: X}, [model.outputs[0].tensor])[0]


def test_four_formats_agree_with_keras():
    import keras
    reference = keras.saving.load_model(os.path.join(MODELS, "digits_resnet.keras"))(X).numpy()
    for name in ("digits_resnet.keras", "digits_resnet.h5", "digits_resnet_savedmodel", "digits_resnet.pb"):
        model = load_model(os.path.join(MODELS, name))
        assert len(model.inputs) == 1 and model.inputs[0].shape[1:] == (32, 32, 3), name
        assert not any(n.op in ("VarHandleOp", "ReadVariableOp") for n in model.graph_def.node), name
        assert_close(_run(model), reference)
    sm = load_model(os.path.join(MODELS, "digits_resnet_savedmodel"))
    assert [s.key for s in sm.outputs] == ["output_0"]


def test_missing_corrupt_and_wrong_signature(tmp_path):
    with pytest.raises(TfcError, match="does not exist"):
        load_model(str(tmp_path / "nope.keras"))
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(TfcError, match="corrupt"):
        load_model(str(bad))
    badpb = tmp_path / "bad.pb"
    badpb.write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(TfcError, match="corrupt|empty"):
        load_model(str(badpb))
    (tmp_path / "dir").mkdir()
    with pytest.raises(TfcError, match="not a SavedModel"):
        load_model(str(tmp_path / "dir"))
    with pytest.raises(TfcError, match="no signature 'other'"):
        load_model(os.path.join(MODELS, "digits_resnet_savedmodel"), signature="other")


def _write_graph(path, build):
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="x")
        tf.identity(build(x), name="y")
    with open(path, "wb") as f:
        f.write(g.as_graph_def().SerializeToString())


def test_unsafe_ops_are_refused_unless_allowed(tmp_path):
    path = str(tmp_path / "unsafe.pb")
    _write_graph(path, lambda x: x + tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32))
    with pytest.raises(TfcError, match=r"outside the allowlist of pure ops .*: ReadFile"):
        load_model(path)
    model = load_model(path, allow_unsafe_ops=True)
    assert any(n.op == "ReadFile" for n in model.graph_def.node)


def test_nan_weights_are_refused(tmp_path):
    path = str(tmp_path / "nan.pb")
    _write_graph(path, lambda x: x * tf.constant([1.0, np.nan, 0.0, 2.0]))
    with pytest.raises(TfcError, match="contains NaN"):
        load_model(path)


def test_keras_lambda_is_not_executed(tmp_path):
    import keras
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(inp))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(TfcError, match="refusing to load"):
        load_model(path)


def test_frozen_pb_names(tmp_path):
    path = str(tmp_path / "g.pb")
    _write_graph(path, lambda x: tf.nn.relu(x))
    model = load_model(path, input_names=["x"], output_names=["y:0"])
    assert model.inputs[0].tensor == "x:0" and model.outputs[0].tensor == "y:0"
    with pytest.raises(TfcError, match="no node 'zz'"):
        load_model(path, output_names=["zz"])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
