"""TF1's quantize_graph test cases, rebuilt here as frozen GraphDefs and run through tfcompress.

The 26 graph-level cases of TF1's `tensorflow/tools/quantization/quantize_graph_test.py`: the graphs,
input values, tolerances and op-count checks are its facts; the code is ours.  As TF1 built them, the
data inputs are Consts.  Each case names them as inputs (they become Placeholders) and passes the test's
values as calibration data, one sample; nothing else is given.

TF1's tolerance rule: every output value within 1.0 of the float graph's (0.5 in its quantized-input
cases).  The float reference is the original graph run by TensorFlow, Consts and all.

TF1's op-count checks counted QuantizeV2 ops in graphs whose inputs were Consts that it quantized up
front.  Here the inputs are fed, so each check is made twice: with the inputs arriving as quint8 codes
(`quantized_input`, the counterpart of TF1's up-front quantization) the counts are TF1's exactly; with
float inputs the graph has exactly one QuantizeV2 more per float input and the other counts unchanged.
"""

import collections
import dataclasses
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import tensorflow as tf

from tfcompress.api.graph_jobs import quantize_graph
from tfcompress.api.models import LoadOptions
from tfcompress.graph.graph import make_const, make_node
from tfcompress.quantize.onednn import mkl_enabled

F32, I32 = tf.float32, tf.int32
TOLERANCE = 1.0             # TF1's test_graph: every value within 1.0 of float.
QUANTIZED_INPUT_TOLERANCE = 0.5   # TF1's quantized-input-range cases.


@dataclasses.dataclass
class Case:
    name: str
    nodes: list
    inputs: Dict[str, np.ndarray]
    outputs: List[str]
    counts: Optional[Dict[str, int]] = None  # TF1's op-count check (reference kernels)
    absent: Tuple[str, ...] = ()             # node names TF1 checks are not in the graph
    present: Tuple[str, ...] = ()            # node names TF1 checks are in the graph
    fallback: Optional[Tuple[float, float]] = None
    input_ranges: Tuple[Tuple[float, float], ...] = ()  # TF1's quantized_input_range values

    def graph_def(self):
        graph_def = tf.compat.v1.GraphDef()
        graph_def.node.extend(self.nodes)
        return graph_def


def const(name, values, dtype, shape):
    return make_const(name, np.array(values, dtype.as_numpy_dtype).reshape(shape), dtype)


def node(op, name, inputs, **attrs):
    """A NodeDef with only the attrs TF1's test set (the loader fills in the op's defaults)."""
    return make_node(op, name, inputs, **attrs)


def placeholder(name, shape):
    return make_node("Placeholder", name, [], dtype=F32,
                     shape=tf.compat.v1.AttrValue(shape=tf.TensorShape(shape).as_proto()))


def value(case_nodes, name):
    found = next(n for n in case_nodes if n.name == name)
    return tf.make_ndarray(found.attr["value"].tensor)


def matmul_case(name, m, n, k, a, b):
    nodes = [const("a_constant", a, F32, [m, k]), const("b_constant", b, F32, [k, n]),
             node("MatMul", "mat_mul", ["a_constant", "b_constant"], T=F32, transpose_a=False, transpose_b=False)]
    return Case(name, nodes, {"a_constant": value(nodes, "a_constant")}, ["mat_mul"])


def conv_case(name, depth, width, height, batch, size, count, stride, padding, inputs, filters):
    nodes = [const("input_constant", inputs, F32, [batch, height, width, depth]),
             const("filter_constant", filters, F32, [size, size, depth, count]),
             node("Conv2D", "conv", ["input_constant", "filter_constant"], T=F32, strides=[1, stride, stride, 1],
                  padding=padding)]
    return Case(name, nodes, {"input_constant": value(nodes, "input_constant")}, ["conv"])


def single_input_case(name, op, shape, outputs=None, counts=None, **attrs):
    nodes = [const("input_constant", range(1, 13), F32, shape), node(op, name, ["input_constant"], **attrs)]
    return Case(name, nodes, {"input_constant": value(nodes, "input_constant")}, outputs or [name], counts)


def twelve(name, dtype=F32, start=1, shape=(2, 2, 3)):
    return const(name, range(start, start + 12), dtype, shape)


def reshape_case():
    def matmul(name, a, b):
        return node("MatMul", name, [a, b], T=F32, transpose_a=False, transpose_b=False)
    nodes = [const("input", [0, 1, 2, 3], F32, [4, 1]), const("weight_1", [.5, .6, .7, .8, .9], F32, [1, 5]),
             matmul("matmul_1", "input", "weight_1"), const("new_shape_node", [10, 2], I32, [2]),
             node("Reshape", "reshape", ["matmul_1", "new_shape_node"], T=F32),
             const("weight_2", [1.5, 2.5], F32, [2, 1]), matmul("matmul_2", "reshape", "weight_2")]
    return Case("reshape", nodes, {"input": value(nodes, "input")}, ["matmul_2"],
                counts={"QuantizeV2": 0, "QuantizedReshape": 1, "Dequantize": 1})


def concat_case(name, dtype, counts=None):
    nodes = [const("concat_dim", 0, I32, []), twelve("a", dtype), twelve("b", dtype, start=13),
             node("Concat", "concat", ["concat_dim", "a", "b"], N=2, T=dtype)]
    return Case(name, nodes, {"a": value(nodes, "a"), "b": value(nodes, "b")}, ["concat"], counts)


def split_concat_case():
    nodes = [twelve("input_constant", shape=(2, 6)), const("split_constant", 1, I32, []),
             node("Split", "split", ["split_constant", "input_constant"], num_split=2, T=F32),
             const("concat_constant", 1, I32, []),
             node("Concat", "concat", ["concat_constant", "split:0", "split:1"], N=2, T=F32)]
    return Case("multiple_outputs", nodes, {"input_constant": value(nodes, "input_constant")}, ["concat"])


def identity_case():
    nodes = [twelve("input_constant", shape=(2, 6)), node("Identity", "identity", ["input_constant"], T=F32),
             node("Mul", "mul", ["identity", "identity"], T=F32)]
    return Case("identity", nodes, {"input_constant": value(nodes, "input_constant")}, ["mul"])


def control_edges_case():
    nodes = [node("NoOp", "no_op", []), const("a_constant", 1, F32, []),
             node("CheckNumerics", "a_check", ["a_constant"], T=F32, message="a"),
             node("Identity", "a_identity", ["a_constant", "^a_check", "^no_op"], T=F32),
             const("b_constant", 1, F32, []), node("CheckNumerics", "b_check", ["b_constant"], T=F32, message="b"),
             node("Identity", "b_identity", ["b_constant", "^b_check"], T=F32),
             node("Add", "add", ["a_identity", "b_identity"], T=F32)]
    return Case("keep_control_edges", nodes,
                {"a_constant": value(nodes, "a_constant"), "b_constant": value(nodes, "b_constant")}, ["add"])


def batch_norm_case():
    nodes = [const("input_constant", [1, 4, 2, 5, 3, 6, -1, -4, -2, -5, -3, -6], F32, [1, 1, 6, 2]),
             const("mean_constant", [10, 20], F32, [2]), const("variance_constant", [0.25, 0.5], F32, [2]),
             const("beta_constant", [0.1, 0.6], F32, [2]), const("gamma_constant", [0, 0], F32, [2]),
             node("BatchNormWithGlobalNormalization", "batch_norm",
                  ["input_constant", "mean_constant", "variance_constant", "beta_constant", "gamma_constant"],
                  T=F32, scale_after_normalization=False, variance_epsilon=0.001)]
    return Case("batch_norm", nodes, {"input_constant": value(nodes, "input_constant")}, ["batch_norm"])


def fake_quant_case(name, before, lo, hi, with_bias):
    if with_bias:
        nodes = [const("input", range(1, 11), F32, [1, 1, 2, 5]), const("offset", [1, 2, 3, 4, 5], F32, [5]),
                 node("BiasAdd", "bias_add", ["input", "offset"], T=F32)]
    else:
        nodes = [const("input", range(1, 13), F32, [1, 2, 6, 1]), node("Relu", "relu", ["input"], T=F32)]
    nodes += [const("min_bias_add", lo, F32, []), const("max_bias_add", hi, F32, []),
              node("FakeQuantWithMinMaxVars", "fake_quant", [before, "min_bias_add", "max_bias_add"])]
    absent = ("fallback_quantization_min_value", "fallback_quantization_max_value") if with_bias else ()
    return Case(name, nodes, {"input": value(nodes, "input")}, ["fake_quant"],
                counts={"QuantizeV2": 0, "Dequantize": 1}, absent=absent,
                fallback=(-100.0, 100.0) if with_bias else None)


def fallback_case():
    nodes = [const("input", range(1, 11), F32, [1, 1, 2, 5]), const("offset", [1, 2, 3, 4, 5], F32, [5]),
             node("BiasAdd", "bias_add", ["input", "offset"], T=F32)]
    return Case("bias_add_w_fallback_min_max_vars", nodes, {"input": value(nodes, "input")}, ["bias_add"],
                counts={"QuantizeV2": 0, "Dequantize": 1, "RequantizationRange": 0},
                present=("fallback_quantization_min_value", "fallback_quantization_max_value"),
                fallback=(-0.5, 15.5))


def quantized_input_bias_add_case():
    nodes = [placeholder("input", [1, 1, 2, 6]), const("offset", [1, 2, 3, 4, 5, 6], F32, [6]),
             node("BiasAdd", "bias_add", ["input", "offset"], T=F32)]
    return Case("quantized_input_range_bias_add", nodes,
                {"input": np.arange(1, 13, dtype=np.float32).reshape(1, 1, 2, 6)}, ["bias_add"],
                counts={"QuantizeV2": 0, "Dequantize": 1}, input_ranges=((-1.0, 20.0), (0.0, 12.0)))


def quantized_input_mat_mul_case():
    nodes = [placeholder("input_0", [3, 2]), placeholder("input_1", [2, 4]),
             node("MatMul", "mat_mul", ["input_0", "input_1"], T=F32)]
    return Case("quantized_input_range_mat_mul", nodes,
                {"input_0": np.arange(1, 7, dtype=np.float32).reshape(3, 2),
                 "input_1": np.array([.8, .7, .6, .5, .4, .3, .2, .1], np.float32).reshape(2, 4)}, ["mat_mul"],
                counts={"QuantizeV2": 0, "Dequantize": 1}, input_ranges=((-1.0, 20.0), (0.0, 6.0)))


pool = dict(ksize=[1, 2, 2, 1], strides=[1, 1, 1, 1], padding="SAME")
CASES = [
    conv_case("odd_padding_problem", 1, 4, 4, 1, 3, 1, 2, "SAME", range(1, 17), range(1, 10)),
    matmul_case("mat_mul_tiny_1", 1, 1, 1, [2], [3]),
    matmul_case("mat_mul_tiny_2", 1, 2, 1, [1], [2, 3]),
    matmul_case("mat_mul_tiny_3", 1, 1, 2, [1, 1], [1, 1]),
    matmul_case("mat_mul_tiny_4", 1, 1, 2, [0, 0], [1, 1]),
    matmul_case("mat_mul_tiny_5", 1, 1, 2, [1, 2], [1, 2]),
    matmul_case("mat_mul_small", 2, 4, 3, range(1, 7), range(7, 19)),
    conv_case("conv", 1, 4, 3, 1, 3, 1, 1, "SAME", range(1, 13), [1, 4, 7, 2, 5, 8, 3, 6, 9]),
    reshape_case(),
    concat_case("non_float_concat", I32),
    Case("non_float_reshape", [twelve("a", I32), const("shape", [12], I32, [1]),
                               node("Reshape", "reshape", ["a", "shape"], T=I32)],
         {"a": np.arange(1, 13, dtype=np.int32).reshape(2, 2, 3)}, ["reshape"]),
    concat_case("concat", F32, counts={"QuantizedConcat": 1}),
    split_concat_case(),
    identity_case(),
    control_edges_case(),
    batch_norm_case(),
    single_input_case("max_pool", "MaxPool", [1, 2, 6, 1], **pool),
    single_input_case("avg_pool", "AvgPool", [1, 2, 6, 1], T=F32, **pool),
    single_input_case("relu", "Relu", [1, 2, 6, 1], T=F32),
    fake_quant_case("relu_w_fake_quant_w_min_max_vars", "relu", 0.0, 12.0, with_bias=False),
    single_input_case("relu6", "Relu6", [1, 2, 6, 1], T=F32),
    Case("bias_add", [twelve("input_constant", shape=(1, 1, 2, 6)), const("offset_constant", range(1, 7), F32, [6]),
                      node("BiasAdd", "bias_add", ["input_constant", "offset_constant"], T=F32)],
         {"input_constant": np.arange(1, 13, dtype=np.float32).reshape(1, 1, 2, 6)}, ["bias_add"]),
    quantized_input_bias_add_case(),
    quantized_input_mat_mul_case(),
    fake_quant_case("bias_add_w_fake_quant_w_min_max_vars", "bias_add", -0.5, 15.5, with_bias=True),
    fallback_case(),
]
# The ops each case must quantize with the reference kernels (TF1's eightbit graphs had them).
REFERENCE_OPS = {
    "odd_padding_problem": "QuantizedConv2D", "conv": "QuantizedConv2D", "mat_mul_small": "QuantizedMatMul",
    "reshape": "QuantizedReshape", "concat": "QuantizedConcat", "multiple_outputs": "QuantizedConcat",
    "batch_norm": "QuantizedBatchNormWithGlobalNormalization", "max_pool": "QuantizedMaxPool",
    "avg_pool": "QuantizedAvgPool", "relu": "QuantizedRelu", "relu6": "QuantizedRelu6",
    "relu_w_fake_quant_w_min_max_vars": "QuantizedRelu", "bias_add": "QuantizedBiasAdd",
    "quantized_input_range_bias_add": "QuantizedBiasAdd", "quantized_input_range_mat_mul": "QuantizedMatMul",
    "bias_add_w_fake_quant_w_min_max_vars": "QuantizedBiasAdd", "bias_add_w_fallback_min_max_vars": "QuantizedBiasAdd",
    **{f"mat_mul_tiny_{i}": "QuantizedMatMul" for i in range(1, 6)},
}
# And with the oneDNN kernels, for the ops that set has.
ONEDNN_OPS = {"odd_padding_problem": "QuantizedConv2DWithBias", "conv": "QuantizedConv2DWithBias",
              "mat_mul_small": "QuantizedMatMulWithBiasAndDequantize", "max_pool": "QuantizedMaxPool",
              "avg_pool": "QuantizedAvgPool", "reshape": "QuantizedReshape"}
KERNELS = ["reference", "tf1"] + (["onednn"] if mkl_enabled() else [])
# The default chain quantizes each matmul at its input and continues in float: a Reshape after a matmul
# is float there (TF1's chain keeps it quint8).
ONE_STEP_OPS = {**REFERENCE_OPS, "reshape": "QuantizedMatMul"}


def test_the_suite_is_tf1s():
    assert len(CASES) == 26
    assert len({c.name for c in CASES}) == 26
    assert sum(c.counts is not None for c in CASES) == 7  # TF1's 7 op-count checks


def float_reference(case):
    """The original graph, Consts and all, run by TensorFlow (its Placeholders fed the test's values)."""
    fed = {n.name for n in case.nodes if n.op == "Placeholder"}
    return run(case.graph_def(), {k: v for k, v in case.inputs.items() if k in fed}, case.outputs)


def run(graph_def, feeds, outputs):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run([o + ":0" for o in outputs], {k + ":0": v for k, v in feeds.items()})


def quantize(case, tmp_path, **kwargs):
    data = {name: v[None] for name, v in case.inputs.items()}  # One sample each.
    if kwargs.get("quantized_input") is not None and case.fallback is not None:
        data = None  # TF1 quantized these with no calibration: the fallback and FakeQuant ranges only.
    kwargs.setdefault("fallback_range", case.fallback)
    return quantize_graph(case.graph_def(), str(tmp_path / f"{case.name}.pb"), data=data,
                          output_format="frozen_pb",
                          load=LoadOptions(input_names=list(case.inputs), output_names=case.outputs), **kwargs)


def codes(x, lo, hi):
    """TF1's quantized-input encoding: round((x - min) * 255 / (max - min))."""
    return np.round((x - lo) * 255.0 / (hi - lo)).astype(tf.quint8.as_numpy_dtype)


def assert_near(expected, results, tolerance, label):
    for want, got in zip(expected, results):
        assert want.shape == got.shape, label
        worst = float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)))) if want.size else 0.0
        assert worst <= tolerance, f"{label}: max error {worst:g} > {tolerance}"


def value_range(case):
    values = np.concatenate([v.reshape(-1) for v in case.inputs.values()]).astype(np.float64)
    return float(min(values.min(), 0.0)), float(max(values.max(), 0.0))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_eightbit_meets_tf1_tolerance(case, kernels, tmp_path):
    expected = float_reference(case)
    result = quantize(case, tmp_path, kernels=kernels)
    tolerance = QUANTIZED_INPUT_TOLERANCE if case.input_ranges else TOLERANCE
    assert_near(expected, run(result.quantized.graph_def, case.inputs, case.outputs), tolerance, case.name)
    ops = collections.Counter(n.op for n in result.quantized.graph_def.node)
    expected_op = {"reference": ONE_STEP_OPS, "tf1": REFERENCE_OPS}.get(kernels, ONEDNN_OPS).get(case.name)
    if expected_op:
        assert ops[expected_op] >= 1, (case.name, dict(ops))
    # TF1 removed Dequantize -> QuantizeV2 pairs after the fact; none is ever made here.
    by_name = {n.name: n for n in result.quantized.graph_def.node}
    for n in result.quantized.graph_def.node:
        if n.op == "QuantizeV2":
            assert by_name[n.input[0].split(":")[0]].op != "Dequantize", (case.name, n.name)


@pytest.mark.skipif(not mkl_enabled(), reason="TF's oneDNN ops are off in this process")
def test_onednn_reshape_between_matmuls_stays_quantized(tmp_path):
    """TF1's test_reshape guard, for the oneDNN kernels: no Dequantize/QuantizeV2 round trip at the Reshape."""
    case = next(c for c in CASES if c.name == "reshape")
    ops = collections.Counter(n.op for n in quantize(case, tmp_path, kernels="onednn").quantized.graph_def.node)
    assert ops["QuantizeV2"] == 1 and ops["QuantizedReshape"] == 1 and ops["Reshape"] == 0, dict(ops)
    assert ops["QuantizedMatMulWithBiasAndRequantize"] == 1 and ops["QuantizedMatMulWithBiasAndDequantize"] == 1


@pytest.mark.parametrize("case", [c for c in CASES if c.counts], ids=lambda c: c.name)
def test_tf1_op_counts_with_quantized_inputs(case, tmp_path):
    """TF1's counts exactly, with the inputs arriving as codes (TF1 quantized its Const inputs up front)."""
    expected = float_reference(case)
    float_inputs = [name for name, v in case.inputs.items() if v.dtype == np.float32]
    for lo, hi in case.input_ranges or (value_range(case),):
        result = quantize(case, tmp_path, kernels="tf1", quantized_input=(lo, hi), overwrite=True)
        graph_def = result.quantized.graph_def
        ops = collections.Counter(n.op for n in graph_def.node)
        for op, count in case.counts.items():
            assert ops[op] == count, (case.name, op, dict(ops))
        names = {n.name for n in graph_def.node}
        assert not names & set(case.absent) and set(case.present) <= names, case.name
        feeds = {name: codes(v, lo, hi) if name in float_inputs else v for name, v in case.inputs.items()}
        tolerance = QUANTIZED_INPUT_TOLERANCE if case.input_ranges else TOLERANCE
        assert_near(expected, run(graph_def, feeds, case.outputs), tolerance, f"{case.name} [{lo}, {hi}]")


@pytest.mark.parametrize("case", [c for c in CASES if c.counts], ids=lambda c: c.name)
def test_tf1_op_counts_with_float_inputs(case, tmp_path):
    """Fed floats, the same graph plus exactly one QuantizeV2 per float input (TF1's count in its
    quantized-input cases run without a quantized input)."""
    result = quantize(case, tmp_path, kernels="tf1")
    ops = collections.Counter(n.op for n in result.quantized.graph_def.node)
    float_inputs = sum(v.dtype == np.float32 for v in case.inputs.values())
    for op, count in case.counts.items():
        assert ops[op] == count + (float_inputs if op == "QuantizeV2" else 0), (case.name, op, dict(ops))


def test_weights_rounded_meets_tf1_tolerance(tmp_path):
    """TF1 also checked weights_rounded (every constant rounded to 256 levels) against float."""
    for case in CASES:
        expected = float_reference(case)
        result = quantize(case, tmp_path, mode="weights_rounded", min_weight_size=1, fallback_range=None)
        assert_near(expected, run(result.quantized.graph_def, case.inputs, case.outputs), TOLERANCE, case.name)


def test_weights_mode_says_when_nothing_changed(tmp_path):
    case = next(c for c in CASES if c.name == "conv")
    result = quantize(case, tmp_path, mode="weights")
    assert any("--min_weight_size" in note for note in result.report.notes)
    result = quantize(case, tmp_path, mode="weights", min_weight_size=1, overwrite=True)
    assert not result.report.notes
    assert collections.Counter(n.op for n in result.quantized.graph_def.node)["Dequantize"] == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
