"""TFLite flatbuffers from an optimized float graph, quantized with *our* calibrated ranges.

The TFLite converter calibrates with min/max only, by running a
representative dataset.  To make any of our calibrators reach the flatbuffer,
conversion is split in the converter's own two steps:

1. calibrate-only conversion (`_experimental_calibrate_only`): the converter
   emits a float flatbuffer whose activation tensors carry min/max statistics.
   It is fed a single all-zero sample: the statistics it records are then
   replaced, every one of them;
2. each statistic is overwritten with the range our cache holds for the same
   tensor.  TFLite names a fused tensor by the ";"-joined names of the TF ops
   it fused (conv;bias;relu), so the range used is that of the fused op that
   comes last in the float graph's topological order.  A tensor with a
   statistic but no range is an error, so no converter-made range survives;
3. the MLIR quantizer (`convert.mlir_quantize`, what the converter itself
   calls after calibrating) quantizes with those statistics.

With the min/max calibrator our statistics are each tensor's true min/max
over the images, and the quantized scales and zero points are the stock
converter's, except where the converter's own statistic is wrong: its
calibrator logs an operator's inputs after the operator ran, and an ADD or
MUL that writes its output into its input's buffer leaves the output's
values there (tensorflow/tensorflow#127842), so the residual branch feeding
an Add gets the sum's range.  tests/export/test_range_path.py checks both on
the zoo.

int16x8 goes through the converter's older quantizer, which re-runs the
representative dataset instead of reading statistics, so for it the
calibration images are read (the cache cannot replace them).

References:
  Jacob et al., arXiv:1712.05877 (the int8 scheme TFLite implements).
"""

import contextlib
import dataclasses
import os
import re
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfcompress.errors import TfcError
from tfcompress.export import flatbuffer as fb
from tfcompress.io.frozen import FrozenModel

MODES = ("none", "float16", "dynamic", "int8", "uint8", "int16x8")
FULL_INTEGER = ("int8", "uint8")
IO_TYPES = ("float", "uint8", "int8")
# The I/O types each mode can give; the first is its default.  A full-integer model defaults to uint8
# I/O: the Task Library and MediaPipe take uint8 or float32 inputs and refuse int8.
MODE_IO = {"none": ("float",), "float16": ("float",), "dynamic": ("float",), "int8": ("uint8", "int8", "float"),
           "uint8": ("uint8", "float"), "int16x8": ("int16", "float")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfliteConfig:
    """How to convert.

    Attributes:
      quantize: none | float16 | dynamic | int8 | uint8 (int8 inside, a per-tensor-friendly uint8 target) |
        int16x8.
      per_channel: per-channel weights (False: per-tensor, for targets that need it).
      io: the input and output type: float, uint8 or int8 (None: the mode's default, `MODE_IO`).
    """
    quantize: str = "int8"
    per_channel: bool = True
    io: Optional[str] = None

    def __post_init__(self):
        if self.quantize not in MODES:
            raise TfcError(f"unknown --quantize {self.quantize!r} (choose from {', '.join(MODES)})")
        if self.io is None:
            object.__setattr__(self, "io", MODE_IO[self.quantize][0])
        elif self.io not in IO_TYPES:
            raise TfcError(f"unknown --io {self.io!r} (choose from {', '.join(IO_TYPES)})")
        elif self.io not in MODE_IO[self.quantize]:
            raise TfcError(f"--quantize={self.quantize} cannot give --io={self.io} (it gives "
                           f"{' or '.join(MODE_IO[self.quantize])})")

    @property
    def needs_ranges(self) -> bool:
        return self.quantize in FULL_INTEGER


def _converter(model: FrozenModel):
    inputs = [(s.tensor.split(":")[0], [1] + [int(d) for d in s.shape[1:]]) for s in model.inputs]
    for name, shape in inputs:
        if any(d is None or d < 0 for d in shape):
            raise TfcError(f"input {name} has an unknown dimension {shape}; TFLite needs a static shape")
    outputs = [s.tensor.split(":")[0] for s in model.outputs]
    return tf.compat.v1.lite.TFLiteConverter(model.graph_def, None, None, input_arrays_with_shape=inputs,
                                             output_arrays=outputs)


def _zero_dataset(model: FrozenModel):
    def gen():
        yield [np.zeros([1] + [int(d) for d in s.shape[1:]], np.dtype(s.dtype)) for s in model.inputs]
    return gen


def graph_order(model: FrozenModel) -> Dict[str, int]:
    """Node name -> position in the float graph's node order (producers first)."""
    return {n.name: i for i, n in enumerate(model.graph_def.node)}


def tf_op_for_tensor(tflite_name: str, order: Dict[str, int]) -> Optional[str]:
    """The TF op whose output a TFLite tensor holds: the last (in graph order) of the ops its name lists.

    The fused tensor holds that op's output; an earlier op's value (a conv's,
    before its Relu) would be wrong, so it is never used as a substitute.
    """
    ops = [p for p in (_tf_op_name(part, order) for part in tflite_name.split(";")) if p is not None]
    return max(ops, key=order.get) if ops else None


def range_for_tensor(tflite_name: str, ranges: Dict[str, Tuple[float, float]],
                     order: Dict[str, int]) -> Optional[Tuple[float, float]]:
    """Our range for a TFLite tensor: that of `tf_op_for_tensor`."""
    op = tf_op_for_tensor(tflite_name, order)
    return None if op is None else ranges.get(op + ":0")


def _tf_op_name(part: str, order: Dict[str, int]) -> Optional[str]:
    """The TF op a part of a TFLite tensor name refers to.

    The converter makes names unique by appending digits ("…/depthwise1" for
    a second tensor of "…/depthwise"), so a part that is no TF op is tried
    again without its trailing digits.
    """
    if part in order:
        return part
    stripped = re.sub(r"\d+$", "", part)
    return stripped if stripped != part and stripped in order else None


def inject_ranges(calibrated: bytes, ranges: Dict[str, Tuple[float, float]], order: Dict[str, int]
                  ) -> Tuple[bytes, List[str]]:
    """Overwrites every min/max statistic in a calibrate-only flatbuffer with our ranges.

    Returns:
      (new flatbuffer, names of the tensors that got a range).

    Raises:
      TfcError: a tensor has a statistic but we have no range for it.
    """
    model = fb.parse(calibrated)
    done = []
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            q = tensor.quantization
            if q is None or q.min is None or len(q.min) == 0:
                continue
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            found = range_for_tensor(name, ranges, order)
            if found is None:
                raise TfcError(f"no calibrated range for TFLite tensor {name!r}; the calibration cache does not "
                               "cover this graph (pass --recalibrate)")
            lo, hi = found
            q.min, q.max = [float(min(lo, 0.0))], [float(max(hi, 0.0))]
            done.append(name)
    return fb.serialize(model), done


# The quantizer's node denylist matches an op by its location name, and a fused
# tensor name ("conv;bias;relu") is imported as a fused location that never
# matches.  Tensor names are therefore joined with a character TF never uses in
# node names while quantizing, and restored afterwards.
_JOIN, _SAFE_JOIN = ";", "|"


def _rename_tensors(flatbuffer: bytes, old: str, new: str) -> bytes:
    model = fb.parse(flatbuffer)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else (tensor.name or "")
            tensor.name = name.replace(old, new)
    return fb.serialize(model)


def calibrated_flatbuffer(model: FrozenModel, ranges: Dict[str, Tuple[float, float]], per_channel: bool = True
                          ) -> Tuple[bytes, List[str]]:
    """Float flatbuffer whose activation statistics are our ranges (steps 1 and 2 of the module docstring)."""
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _zero_dataset(model)
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    converter._experimental_disable_per_channel = not per_channel  # pylint: disable=protected-access
    return inject_ranges(_run_converter(converter), ranges, graph_order(model))


def quantize_calibrated(calibrated: bytes, mode: str, per_channel: bool = True,
                        float_layers: Sequence[str] = ()) -> bytes:
    """Step 3: the MLIR quantizer on a calibrated flatbuffer, then int8/uint8 I/O.

    Args:
      float_layers: TFLite tensor names (";"-joined) of operators to keep in float.
    """
    from tensorflow.lite.python import convert as lite_convert  # pylint: disable=import-outside-toplevel
    from tensorflow.lite.python import util as lite_util  # pylint: disable=import-outside-toplevel
    io_type = tf.int8 if mode == "int8" else tf.uint8
    try:
        safe = _rename_tensors(calibrated, _JOIN, _SAFE_JOIN)
        # Quantize with float I/O, then set the boundary type, as the converter itself does:
        # its post-step replaces the boundary Quantize/Dequantize ops by int8 or uint8 I/O.
        with _native_stderr_discarded():
            quantized = lite_convert.mlir_quantize(
                safe, disable_per_channel=not per_channel, fully_quantize=False,
                denylisted_nodes=[n.replace(_JOIN, _SAFE_JOIN) for n in float_layers] or None)
        quantized = _rename_tensors(quantized, _SAFE_JOIN, _JOIN)
        return lite_util.modify_model_io_type(quantized, io_type, io_type)
    except Exception as e:
        raise TfcError(f"TFLite quantizer failed: {str(e).strip().splitlines()[0][:300]}") from e


_IO_DTYPE = {"float": 0, "uint8": 3, "int8": 9}  # TensorType values


def _op_code(model, builtin: int) -> int:
    """The index of the operator code for a builtin op (added at version 2, the int8 kernels', if missing)."""
    schema = fb.schema_module()
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and not code.customCode:
            return i
    model.operatorCodes.append(schema.OperatorCodeT(deprecatedBuiltinCode=min(builtin, 127), version=2,
                                                    builtinCode=builtin))
    return len(model.operatorCodes) - 1


def set_io(flatbuffer: bytes, io: str) -> bytes:
    """A full-integer flatbuffer (int8 or uint8 I/O) with `io` (float, uint8 or int8) at its boundaries.

    Each integer input or output of another type gets a tensor of the wanted
    type in its place, joined to it by a QUANTIZE (uint8 <-> int8: the same
    scale, the zero point moved by 128; float -> integer) or a DEQUANTIZE
    (integer -> float), as the converter's own `inference_input_type` does.
    The scale is kept, so values are unchanged.
    """
    schema = fb.schema_module()
    want = _IO_DTYPE[io]
    model = fb.parse(flatbuffer)
    subgraph = model.subgraphs[0]
    subgraph.inputs, subgraph.outputs = [int(i) for i in subgraph.inputs], [int(i) for i in subgraph.outputs]
    changed = False

    def boundary(index: int):
        tensor = subgraph.tensors[index]
        if tensor.type not in (_IO_DTYPE["uint8"], _IO_DTYPE["int8"]) or tensor.type == want:
            return None
        new = schema.TensorT()
        new.shape, new.shapeSignature, new.type = tensor.shape, tensor.shapeSignature, want
        new.name = fb.text(tensor.name)
        tensor.name = new.name + ("_int8" if tensor.type == _IO_DTYPE["int8"] else "_uint8")
        new.buffer = 0
        if want != _IO_DTYPE["float"]:
            q = tensor.quantization
            new.quantization = schema.QuantizationParametersT()
            new.quantization.scale = list(q.scale)
            shift = 128 if want == _IO_DTYPE["uint8"] else -128
            new.quantization.zeroPoint = [int(z) + shift for z in q.zeroPoint]
        subgraph.tensors.append(new)
        return len(subgraph.tensors) - 1

    head, tail = [], []
    for position, index in enumerate(subgraph.inputs):
        new = boundary(index)
        if new is not None:
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = _op_code(model, 114), [new], [index]  # QUANTIZE
            head.append(op)
            subgraph.inputs[position] = new
            changed = True
    for position, index in enumerate(subgraph.outputs):
        new = boundary(index)
        if new is not None:
            op = schema.OperatorT()
            op.opcodeIndex = _op_code(model, 6 if io == "float" else 114)  # DEQUANTIZE or QUANTIZE
            op.inputs, op.outputs = [index], [new]
            tail.append(op)
            subgraph.outputs[position] = new
            changed = True
    if not changed:
        return flatbuffer
    subgraph.operators = head + list(subgraph.operators) + tail
    return fb.serialize(model)


@contextlib.contextmanager
def _native_stderr_discarded():
    """Discards what native code writes to file descriptor 2 meanwhile.

    The converter and quantizer print their settings ("fully_quantize: 0, inference_type: 6, ...") with
    C++ streams; a failure still reaches us as a Python exception, whose first line becomes the error.
    """
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _run_converter(converter) -> bytes:
    try:
        with _native_stderr_discarded():
            return converter.convert()
    except Exception as e:  # The converter raises a variety of types.
        raise TfcError(f"TFLite converter failed: {str(e).strip().splitlines()[0][:300]}") from e


@dataclasses.dataclass
class TfliteResult:
    flatbuffer: bytes
    ranges_applied: List[str]  # TFLite tensors whose statistics came from our cache.


def convert_tflite(model: FrozenModel, config: TfliteConfig,
                   ranges: Optional[Dict[str, Tuple[float, float]]] = None,
                   dataset: Optional[Iterable[Sequence[np.ndarray]]] = None,
                   float_layers: Sequence[str] = ()) -> TfliteResult:
    """Converts an optimized float model to a TFLite flatbuffer.

    Args:
      model: output of `graph.passes.optimize`.
      config: the mode.
      ranges: calibrated ranges per float-graph tensor (int8 and uint8).
      dataset: a callable yielding input lists (int16x8 only: its quantizer
        calibrates by running it).
      float_layers: int8/uint8 only: TFLite tensor names of operators kept in float.

    Raises:
      TfcError: missing ranges or dataset, or the converter refused the graph.
    """
    mode = config.quantize
    if mode in FULL_INTEGER:
        if ranges is None:
            raise TfcError(f"--quantize={mode} needs calibration ranges")
        calibrated, applied = calibrated_flatbuffer(model, ranges, config.per_channel)
        return TfliteResult(flatbuffer=quantize_calibrated(calibrated, mode, config.per_channel, float_layers),
                            ranges_applied=applied)
    if float_layers:
        raise TfcError("--float_layers applies to --quantize=int8 and uint8 only")
    converter = _converter(model)
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int16x8":
        if dataset is None:
            raise TfcError("--quantize=int16x8 needs --calibration_images (its quantizer runs the images itself)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if config.io == "int16":
            converter.inference_input_type = tf.int16
            converter.inference_output_type = tf.int16
    converter._experimental_disable_per_channel = not config.per_channel  # pylint: disable=protected-access
    return TfliteResult(flatbuffer=_run_converter(converter), ranges_applied=[])


def convert_tflite_default(model: FrozenModel, dataset, mode: str = "int8", per_channel: bool = True) -> bytes:
    """The plain converter's own full-integer quantization, for comparison: it runs `dataset` itself.

    This is what `TFLiteConverter` does with `representative_dataset` and
    int8 (or uint8) inference types, min/max calibration included.
    """
    if mode not in FULL_INTEGER:
        raise TfcError(f"the converter default is compared for int8 and uint8, not {mode}")
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8 if mode == "int8" else tf.uint8
    converter._experimental_disable_per_channel = not per_channel  # pylint: disable=protected-access
    return _run_converter(converter)


def keras_float_flatbuffer(model) -> bytes:
    """An in-memory Keras model as a float32 .tflite, through the same freeze and optimize passes as `convert`."""
    from tfcompress.graph.passes import optimize  # pylint: disable=import-outside-toplevel
    from tfcompress.io.loaders import freeze_keras_model  # pylint: disable=import-outside-toplevel
    return convert_tflite(optimize(freeze_keras_model(model, model.name))[0], TfliteConfig(quantize="none")).flatbuffer


QAT_OPS = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel", "FakeQuantWithMinMaxArgs")


def is_qat(model: FrozenModel) -> bool:
    """True if the graph holds fake-quantization ops (a quantization-aware-trained model)."""
    return any(n.op in QAT_OPS for n in model.graph_def.node)


def _input_stats(model: FrozenModel) -> Tuple[float, float]:
    """(mean, std) with real = (q - mean) / std for the int8 input, from the input's FakeQuant range.

    The range is nudged as TF's FakeQuant does (zero exactly representable),
    so the int8 input has exactly the QAT model's input quantization.
    """
    from tensorflow.python.framework import tensor_util  # pylint: disable=import-outside-toplevel
    nodes = {n.name: n for n in model.graph_def.node}
    placeholder = model.inputs[0].tensor.split(":")[0]

    def source(name):
        name = name.split(":")[0].lstrip("^")
        while nodes[name].op == "Identity":
            name = nodes[name].input[0].split(":")[0]
        return name

    for node in model.graph_def.node:
        if node.op == "FakeQuantWithMinMaxVars" and source(node.input[0]) == placeholder:
            lo, hi = (float(tensor_util.MakeNdarray(nodes[source(i)].attr["value"].tensor)) for i in node.input[1:3])
            scale = (hi - lo) / 255.0
            zero_point = float(np.round(np.clip(-lo / scale, 0.0, 255.0)))
            return zero_point - 128.0, 1.0 / scale
    raise TfcError("the quantization-aware model has no fake quantization on its input")


def convert_qat(model: FrozenModel) -> bytes:
    """An int8 flatbuffer (int8 I/O) whose ranges are the fake-quantization ranges learned in training."""
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_type = converter.inference_input_type = converter.inference_output_type = tf.int8
    converter.quantized_input_stats = {model.inputs[0].tensor.split(":")[0]: _input_stats(model)}
    return _run_converter(converter)
