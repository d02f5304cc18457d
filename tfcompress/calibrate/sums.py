"""Ranges of a residual sum's branch: an operand that only the Add reads is given the sum's range too.

A residual block ends in y = x + f(x).  The branch output f(x) has no
activation after it (a linear bottleneck, a projection, a gated SE map),
and its min/max over the calibration images is all its own range knows.  A
new image that takes the branch past that range is clipped there, and the
clipped part never comes back: every later layer reads the sum.  The sum's
range is reached by the shortcut and the branch together, and int8 ADD
rescales both operands to the sum's scale anyway, so giving the branch the
union of its range and the sum's coarsens its steps to about the sum's own,
while a branch value the calibration images never reached is kept as long
as the sum stays in range.

Only an operand that nothing but the Add reads changes: a shortcut read by
the next block's convolutions keeps its range, which those convolutions'
input quantization needs.  So does a branch that ends in a max pool: its
int8 output keeps its input's scale, so widening it would coarsen the steps
of the convolution before the pool at every value the pool reads (done that
way, the mini-Xception's held-out error went from 0.65x the converter's, with
its shortcuts widened alone, to 0.87x over the fidelity benchmark's four
calibration halves).

The stock TFLite converter ends up with much the same ranges by accident: its
calibrator logs an in-place ADD's output as the range of the input it
overwrote (tensorflow/tensorflow#127842; see `export.tflite`).

Residual learning: He et al., "Deep Residual Learning for Image
Recognition", arXiv:1512.03385; the int8 ADD's rescaling: Jacob et al.,
arXiv:1712.05877, Sec. 2.
"""

from typing import Dict, List, Tuple

from tfcompress.io.frozen import FrozenModel

# TF ops that add two tensors elementwise (Keras Add layers become AddV2).
_SUMS = ("Add", "AddV2")
# Ops whose int8 output keeps its input's scale (the TFLite int8 spec ties them): a branch ending in one
# keeps its range (see the module docstring).
_SAME_SCALE = ("MaxPool", "Reshape", "Squeeze", "ExpandDims", "Identity")
# Elementwise ops of one tensor (a constant aside): an Add of two such functions of the same tensor is an
# activation (Keras PReLU is relu(x) - alpha * relu(-x)), not a residual sum.
_ELEMENTWISE = ("Relu", "Neg", "Mul", "Abs", "Identity")


def _inputs(op):
    return [t for t in op.inputs if t.op.type != "Const"]


def _root(tensor):
    """The tensor `tensor` is an elementwise function of, through ops with one non-constant input."""
    while tensor.op.type in _ELEMENTWISE and len(_inputs(tensor.op)) == 1:
        tensor = _inputs(tensor.op)[0]
    return tensor


def branch_operands(model: FrozenModel, ranges: Dict[str, Tuple[float, float]]) -> List[Tuple[str, str]]:
    """(operand, sum) tensor pairs of the float graph: every Add of two calibrated tensors (not a constant
    or a bias, and not two functions of one tensor), and each of its operands that no other op reads and
    no same-scale op (_SAME_SCALE) writes."""
    from tfcompress.graph.runner import imported_graph  # pylint: disable=import-outside-toplevel
    graph = imported_graph(model.graph_def)
    pairs = []
    for op in graph.get_operations():
        if op.type not in _SUMS or len(op.inputs) != 2:
            continue
        total = op.outputs[0].name
        if total not in ranges or any(t.name not in ranges for t in op.inputs):
            continue
        if _root(op.inputs[0]) is _root(op.inputs[1]):
            continue
        pairs.extend((t.name, total) for t in op.inputs
                     if len(t.consumers()) == 1 and t.op.type not in _SAME_SCALE)
    return pairs


def widen(model: FrozenModel, ranges: Dict[str, Tuple[float, float]]
          ) -> Tuple[Dict[str, Tuple[float, float]], List[str]]:
    """(ranges with every residual branch operand's range the union of its own and its sum's, the operands
    whose range grew)."""
    widened, grown = dict(ranges), []
    for operand, total in branch_operands(model, ranges):
        lo, hi = widened[operand]
        new = (min(lo, ranges[total][0]), max(hi, ranges[total][1]))
        if new != (lo, hi):
            widened[operand] = new
            grown.append(operand)
    return widened, grown
