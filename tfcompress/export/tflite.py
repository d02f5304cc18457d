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

int16x8 goes through the converter's older quantizer, which re-runs the
representative dataset instead of reading statistics, so for it the
calibration images are read (the cache cannot replace them).

References:
  Jacob et al., arXiv:1712.05877 (the int8 scheme TFLite implements).
"""

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfcompress.errors import TfcError
from tfcompress.io.frozen import FrozenModel

MODES = ("none", "float16", "dynamic", "int8", "uint8", "int16x8")
FULL_INTEGER = ("int8", "uint8")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfliteConfig:
    """How to convert.

    Attributes:
      quantize: none | float16 | dynamic | int8 (int8 I/O) | uint8 (uint8 I/O) | int16x8.
      per_channel: per-channel weights (False: per-tensor, for targets that need it).
    """
    quantize: str = "int8"
    per_channel: bool = True

    def __post_init__(self):
        if self.quantize not in MODES:
            raise TfcError(f"unknown --quantize {self.quantize!r} (choose from {', '.join(MODES)})")

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


def range_for_tensor(tflite_name: str, ranges: Dict[str, Tuple[float, float]],
                     order: Dict[str, int]) -> Optional[Tuple[float, float]]:
    """Our range for a TFLite tensor: that of the last (in graph order) of the TF ops its name lists.

    The fused tensor holds that op's output; an earlier op's range (a conv's,
    before its Relu) would be wrong, so it is never used as a substitute.
    """
    ops = [p for p in tflite_name.split(";") if p in order]
    if not ops:
        return None
    return ranges.get(max(ops, key=order.get) + ":0")


def inject_ranges(calibrated: bytes, ranges: Dict[str, Tuple[float, float]], order: Dict[str, int]
                  ) -> Tuple[bytes, List[str]]:
    """Overwrites every min/max statistic in a calibrate-only flatbuffer with our ranges.

    Returns:
      (new flatbuffer, names of the tensors that got a range).

    Raises:
      TfcError: a tensor has a statistic but we have no range for it.
    """
    import flatbuffers  # pylint: disable=import-outside-toplevel
    from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(calibrated, 0))
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
    builder = flatbuffers.Builder(len(calibrated) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), done


@dataclasses.dataclass
class TfliteResult:
    flatbuffer: bytes
    ranges_applied: List[str]  # TFLite tensors whose statistics came from our cache.


def convert_tflite(model: FrozenModel, config: TfliteConfig,
                   ranges: Optional[Dict[str, Tuple[float, float]]] = None,
                   dataset: Optional[Iterable[Sequence[np.ndarray]]] = None) -> TfliteResult:
    """Converts an optimized float model to a TFLite flatbuffer.

    Args:
      model: output of `graph.passes.optimize`.
      config: the mode.
      ranges: calibrated ranges per float-graph tensor (int8 and uint8).
      dataset: a callable yielding input lists (int16x8 only: its quantizer
        calibrates by running it).

    Raises:
      TfcError: missing ranges or dataset, or the converter refused the graph.
    """
    from tensorflow.lite.python import convert as lite_convert  # pylint: disable=import-outside-toplevel
    converter = _converter(model)
    mode = config.quantize
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in FULL_INTEGER:
        if ranges is None:
            raise TfcError(f"--quantize={mode} needs calibration ranges")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _zero_dataset(model)
        converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    elif mode == "int16x8":
        if dataset is None:
            raise TfcError("--quantize=int16x8 needs --calibration_images (its quantizer runs the images itself)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        converter.inference_input_type = tf.int16
        converter.inference_output_type = tf.int16
    converter._experimental_disable_per_channel = not config.per_channel  # pylint: disable=protected-access
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # The converter raises a variety of types.
        raise TfcError(f"TFLite converter failed: {str(e).strip().splitlines()[0][:300]}") from e
    applied: List[str] = []
    if mode in FULL_INTEGER:
        flatbuffer, applied = inject_ranges(flatbuffer, ranges, graph_order(model))
        io_type = tf.int8 if mode == "int8" else tf.uint8
        try:
            # Quantize with float I/O, then set the boundary type, as the converter itself does:
            # its post-step replaces the boundary Quantize/Dequantize ops by int8 or uint8 I/O.
            flatbuffer = lite_convert.mlir_quantize(flatbuffer, disable_per_channel=not config.per_channel,
                                                    fully_quantize=False)
            from tensorflow.lite.python import util as lite_util  # pylint: disable=import-outside-toplevel
            flatbuffer = lite_util.modify_model_io_type(flatbuffer, io_type, io_type)
        except Exception as e:
            raise TfcError(f"TFLite quantizer failed: {str(e).strip().splitlines()[0][:300]}") from e
    return TfliteResult(flatbuffer=flatbuffer, ranges_applied=applied)
