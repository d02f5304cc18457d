"""Each rewrite keeps float outputs equal (vs the unrewritten graph) and changes structure as claimed."""

import collections
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_close
from tfcompress.graph.graph import Graph
from tfcompress.graph.passes import PASSES
from tfcompress.graph.rewriters import (fold_batch_norm, fold_bias_add, fold_constants, recognise_activations,
                                        static_shapes, strip_identity)
from tfcompress.graph.runner import run_graph
from tfcompress.io.frozen import FrozenModel, TensorSig

v1 = tf.compat.v1
RNG = np.random.default_rng(0)


def _graph(build, shape=(2, 8, 8, 3)):
    """A FrozenModel from a v1 graph-building function of one placeholder."""
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, (None,) + shape[1:], name="x")
        tf.identity(build(x), name="y")
    return FrozenModel(graph_def=g.as_graph_def(), inputs=[TensorSig("x", "x:0", "float32", (None,) + shape[1:])],
                       outputs=[TensorSig("y", "y:0", "float32", None)])


def _run_pass(model, fn, shape=(2, 8, 8, 3)):
    """Applies one rewrite (after strip/fold so constants are exposed); returns (before, after, ops, count)."""
    graph = Graph(model.graph_def, outputs=["y"])
    strip_identity.run(graph)
    fold_constants.run(graph)
    count = fn(graph)
    after = graph.to_graph_def()
    x = RNG.standard_normal(shape).astype(np.float32)
    ref = run_graph(model.graph_def, {"x:0": x}, ["y:0"])[0]
    out = run_graph(after, {"x:0": x}, ["y:0"])[0]
    return ref, out, collections.Counter(n.op for n in after.node), count


def _const(*shape, positive=False):
    v = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(v) + 0.5 if positive else v


def test_fold_fused_batch_norm_into_conv():
    w, c = _const(3, 3, 3, 4), 4
    gamma, beta, mean, var = _const(c), _const(c), _const(c), _const(c, positive=True)
    model = _graph(lambda x: v1.nn.fused_batch_norm(tf.nn.conv2d(x, w, 1, "SAME"), gamma, beta, mean, var,
                                                    epsilon=1e-3, is_training=False)[0])
    ref, out, ops, count = _run_pass(model, fold_batch_norm.run)
    assert count == 1
    assert ops["FusedBatchNormV3"] == 0 and ops["Conv2D"] == 1 and ops["BiasAdd"] == 1
    assert_close(out, ref)


def test_fold_keras3_decomposed_batch_norm_into_depthwise():
    w = _const(3, 3, 3, 2)
    gamma, beta, mean, var = _const(6), _const(6), _const(6), _const(6, positive=True)

    def build(x):  # Keras 3's spelling of inference BN.
        inv = tf.math.rsqrt(var + 1e-3) * gamma
        y = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")
        return y * inv + (beta - mean * inv)

    ref, out, ops, count = _run_pass(_graph(build), fold_batch_norm.run)
    assert count == 1
    assert ops["Mul"] == 0 and ops["AddV2"] == 0 and ops["Sub"] == 0 and ops["Rsqrt"] == 0
    assert ops["DepthwiseConv2dNative"] == 1 and ops["BiasAdd"] == 1
    assert_close(out, ref)


def test_fold_batch_norm_after_matmul_with_bias():
    w, b, s, t = _const(12, 5), _const(5), _const(5), _const(5)
    model = _graph(lambda x: tf.nn.bias_add(tf.reshape(x, [-1, 12]) @ w, b) * s + t, shape=(2, 2, 2, 3))
    ref, out, ops, count = _run_pass(model, fold_batch_norm.run, shape=(2, 2, 2, 3))
    assert count == 1 and ops["Mul"] == 0 and ops["BiasAdd"] == 1
    assert_close(out, ref)


def test_batch_norm_not_after_linear_op_is_left_alone():
    s, t = _const(3), _const(3)
    model = _graph(lambda x: tf.nn.relu(x) * s + t)
    ref, out, ops, count = _run_pass(model, fold_batch_norm.run)
    assert count == 0 and ops["Mul"] == 1
    assert_close(out, ref)


def test_fold_bias_add_turns_add_into_bias_add_and_merges_chains():
    w, b1, b2 = _const(1, 1, 3, 4), _const(4), _const(4)
    model = _graph(lambda x: tf.nn.bias_add(tf.nn.conv2d(x, w, 1, "SAME") + b1, b2))
    ref, out, ops, count = _run_pass(model, fold_bias_add.run)
    assert count == 2
    assert ops["BiasAdd"] == 1 and ops["AddV2"] == 0
    assert_close(out, ref)


@pytest.mark.parametrize("spelling,op", [
    (lambda x: tf.maximum(x, 0.0), "Relu"),
    (lambda x: tf.minimum(tf.nn.relu(x), 6.0), "Relu6"),
    (lambda x: tf.clip_by_value(x, 0.0, 6.0), "Relu6"),
    (lambda x: tf.maximum(tf.minimum(x, 6.0), 0.0), "Relu6"),
    (lambda x: tf.maximum(x, 0.2 * x), "LeakyRelu"),
])
def test_recognise_activations(spelling, op):
    model = _graph(lambda x: spelling(x * 5.0))
    ref, out, ops, count = _run_pass(model, recognise_activations.run)
    assert count == 1 and ops[op] == 1
    assert ops["Maximum"] == 0 and ops["Minimum"] == 0 and ops["ClipByValue"] == 0
    assert_close(out, ref)


def test_maximum_with_nonzero_is_not_relu():
    ref, out, ops, count = _run_pass(_graph(lambda x: tf.maximum(x, 0.5)), recognise_activations.run)
    assert count == 0 and ops["Maximum"] == 1


def test_strip_identity_and_fold_constants():
    c = _const(3)
    model = _graph(lambda x: tf.identity(x) + tf.exp(tf.constant(c)) * 2.0)
    graph = Graph(model.graph_def, outputs=["y"])
    assert strip_identity.run(graph) >= 1
    assert fold_constants.run(graph) == 1
    after = graph.to_graph_def()
    ops = collections.Counter(n.op for n in after.node)
    assert ops["Exp"] == 0 and ops["Mul"] == 0 and ops["Identity"] == 1  # Only the output Identity stays.
    x = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)
    assert_close(run_graph(after, {"x:0": x}, ["y:0"])[0], x + np.exp(c) * 2.0)


def test_strip_identity_removes_identity_n_of_a_keras_swish():
    """Keras' swish leaves IdentityN(x * sigmoid(x), x) behind its custom gradient; every reader is rewired."""
    import keras
    from tfcompress.calibrate.collect import calibration_tensors
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import freeze_keras_model
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="swish")(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    net = keras.Model(inputs, keras.layers.Activation("swish")(x))
    frozen = freeze_keras_model(net)
    assert any(n.op == "IdentityN" for n in frozen.graph_def.node)
    model, _ = optimize(frozen)
    assert not any(n.op == "IdentityN" for n in model.graph_def.node)
    images = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)
    got = run_graph(model.graph_def, {model.inputs[0].tensor: images}, [model.outputs[0].tensor])[0]
    assert_close(got, net.predict(images, verbose=0))
    consumers = {i.split(":")[0] for n in model.graph_def.node for i in n.input}
    readable = set(calibration_tensors(model))
    assert all(n.name + ":0" in readable for n in model.graph_def.node
               if n.op == "Mul" and n.name in consumers)  # The swish outputs get calibration ranges.


def test_static_shapes_makes_flatten_shape_constant():
    import keras
    inp = keras.Input((4, 4, 3))
    from tfcompress.io.loaders import freeze_keras_model
    model = freeze_keras_model(keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp))))
    graph = Graph(model.graph_def, outputs=[s.tensor for s in model.outputs])
    strip_identity.run(graph)
    assert static_shapes.run(graph) >= 1
    after = graph.to_graph_def()
    reshape = [n for n in after.node if n.op == "Reshape"][0]
    assert graph.const_value(reshape.input[1]).tolist() == [-1, 48]
    assert not any(n.op in ("Shape", "Pack") for n in after.node)


def test_pass_list_is_the_single_ordered_list():
    names = [name for name, _ in PASSES]
    assert names.index("fold_constants") < names.index("fold_batch_norm") < names.index("fold_bias_add")


def test_optimize_keeps_shipped_model_outputs(float_model):
    from tests.conftest import KERAS_MODEL
    from tfcompress.io.loaders import load_model
    raw = load_model(KERAS_MODEL)
    ops = collections.Counter(n.op for n in float_model.graph_def.node)
    assert ops["Mul"] == 0 and ops["Rsqrt"] == 0 and ops["Sub"] == 0  # All 8 BNs folded.
    assert ops["Conv2D"] == 8 and ops["DepthwiseConv2dNative"] == 1 and ops["MatMul"] == 2
    x = RNG.random((4, 32, 32, 3)).astype(np.float32)
    ref = run_graph(raw.graph_def, {raw.inputs[0].tensor: x}, [raw.outputs[0].tensor])[0]
    out = run_graph(float_model.graph_def, {float_model.inputs[0].tensor: x}, [float_model.outputs[0].tensor])[0]
    assert_close(out, ref)



def test_inner_fetches_survive_oneDNN_fusions():
    """The zoo SE net's swish Sigmoids, fetched alone: with TF's oneDNN ops on, the remapper fuses the
    swish into its conv and a plain session cannot find the tensors (TF 2.21); a runner told of inner
    fetches returns sigmoid of their inputs, fetched in a separate run."""
    from tfcompress.evaluate.zoo import ZOO
    from tfcompress.graph.graph import tensor_name
    from tfcompress.graph.passes import optimize
    from tfcompress.graph.runner import GraphRunner
    from tfcompress.io.loaders import load_model
    model, _ = optimize(load_model(ZOO["se_patches"].path))
    sigmoids = [n for n in model.graph_def.node if n.op == "Sigmoid"]
    assert sigmoids
    x = RNG.standard_normal((2, 32, 32, 3)).astype(np.float32)
    feed = [model.image_input().tensor]
    with GraphRunner(model.graph_def, feed, [n.name + ":0" for n in sigmoids], inner_fetches=True) as runner:
        got = runner.run(x)
    with GraphRunner(model.graph_def, feed, [tensor_name(n.input[0]) for n in sigmoids], inner_fetches=True) as runner:
        logits = runner.run(x)
    for g, z in zip(got, logits):
        np.testing.assert_allclose(g, 1.0 / (1.0 + np.exp(-z.astype(np.float64))), rtol=1e-5, atol=1e-6)

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
