"""Reading and editing TFLite flatbuffers through the schema's object API.

One place for the parsing every other module needs: operator lists, tensor
names, exposing intermediate tensors as outputs (so that a delegate has to
materialize them), and the older tfcompress metadata buffer name.
"""

import dataclasses
import functools
from typing import Dict, List, Optional, Sequence

import numpy as np

from tfcompress.errors import TfcError

TFLITE_IDENTIFIER = b"TFL3"

# The schema's TensorType enum, as numpy dtypes (the types our exporters emit).
TENSOR_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


def schema_module():
    from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
    return schema


def text(value) -> str:
    """A flatbuffer string field (bytes or None) as str."""
    return value.decode() if isinstance(value, bytes) else (value or "")


# Element widths in bits of the fixed-size tensor types, for checking constant buffers against shapes.
_TYPE_BITS = {0: 32, 1: 16, 2: 32, 3: 8, 4: 64, 6: 8, 7: 16, 8: 64, 9: 8, 10: 64, 11: 128, 12: 64, 15: 32,
              16: 16, 17: 4, 18: 16, 19: 2, 20: 4}
_TYPE_COUNT = 21  # TensorType values 0 .. 20 (STRING, RESOURCE and VARIANT have no fixed width)


class _Corrupt(Exception):
    """An inconsistency found while checking; becomes the TfcError of `parse`."""


def _check_tables(root, size: int) -> None:
    """Structure checks on the raw tables, before anything is unpacked.

    Vector lengths must fit in the file, and no two subgraphs, operators or
    tensors may be one table: a converter writes each once, and aliasing lets
    a small file declare millions of operators.
    """
    def length(n: int, what: str) -> int:
        if n * 4 > size:
            raise _Corrupt(f"{what} vector of {n} entries is longer than the file")
        return n

    seen = set()

    def distinct(table, what: str) -> None:
        pos = table._tab.Pos  # pylint: disable=protected-access
        if pos in seen or not 0 < pos < size:
            raise _Corrupt(f"two {what}s share one table, or one lies outside the file")
        seen.add(pos)

    length(root.OperatorCodesLength(), "operator code")
    length(root.BuffersLength(), "buffer")
    for g in range(length(root.SubgraphsLength(), "subgraph")):
        subgraph = root.Subgraphs(g)
        distinct(subgraph, "subgraph")
        for i in range(length(subgraph.OperatorsLength(), "operator")):
            distinct(subgraph.Operators(i), "operator")
        for i in range(length(subgraph.TensorsLength(), "tensor")):
            distinct(subgraph.Tensors(i), "tensor")


def _utf8(value, what: str) -> None:
    if isinstance(value, bytes):
        try:
            value.decode()
        except UnicodeDecodeError as e:
            raise _Corrupt(f"{what} is not UTF-8") from e


def _indices(values, limit: int, what: str, optional: bool = False) -> None:
    for v in values if values is not None else []:
        if not (-1 if optional else 0) <= int(v) < limit:
            raise _Corrupt(f"{what} index {int(v)} is out of range (0..{limit - 1})")


@functools.lru_cache(maxsize=None)
def _largest_builtin() -> int:
    return max(v for k, v in vars(schema_module().BuiltinOperator).items() if not k.startswith("_"))


def _check_model(model, size: int) -> None:
    """Every index, enum, string and buffer size of the unpacked model is consistent."""
    buffers = model.buffers or []
    largest_builtin = _largest_builtin()
    for code in model.operatorCodes or []:
        if not (0 <= code.builtinCode <= largest_builtin and 0 <= code.deprecatedBuiltinCode <= 127):
            raise _Corrupt(f"unknown builtin operator {code.builtinCode}")
        _utf8(code.customCode, "a custom operator code")
    if not model.subgraphs:
        raise _Corrupt("no subgraph")
    codes = len(model.operatorCodes or [])
    for subgraph in model.subgraphs:
        _utf8(subgraph.name, "a subgraph name")
        count = len(subgraph.tensors or [])
        _indices(subgraph.inputs, count, "a subgraph input")
        _indices(subgraph.outputs, count, "a subgraph output")
        for op in subgraph.operators or []:
            if not 0 <= op.opcodeIndex < codes:
                raise _Corrupt("operator code index out of range")
            _indices(op.inputs, count, "an operator input", optional=True)
            _indices(op.outputs, count, "an operator output")
            _indices(op.intermediates, count, "an operator intermediate")
        for tensor in subgraph.tensors or []:
            _check_tensor(tensor, buffers)
    for buffer in buffers:
        if buffer.offset and (buffer.offset + buffer.size > size or buffer.offset < 0 or buffer.size < 0):
            raise _Corrupt("a buffer ends past the file")
    for entry in model.metadata or []:
        _utf8(entry.name, "a metadata name")
        _indices([entry.buffer], len(buffers), "a metadata buffer")
    for signature in model.signatureDefs or []:
        _utf8(signature.signatureKey, "a signature key")
        _indices([signature.subgraphIndex], len(model.subgraphs), "a signature subgraph")
        tensors = len(model.subgraphs[signature.subgraphIndex].tensors or [])
        for io in (signature.inputs or []) + (signature.outputs or []):
            _utf8(io.name, "a signature tensor name")
            _indices([io.tensorIndex], tensors, "a signature tensor")


def _check_tensor(tensor, buffers) -> None:
    _utf8(tensor.name, "a tensor name")
    if not 0 <= tensor.type < _TYPE_COUNT:
        raise _Corrupt(f"unknown tensor type {tensor.type}")
    shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
    if len(shape) > 16 or any(d < 0 for d in shape):
        raise _Corrupt(f"a tensor shape {shape[:8]} is invalid")
    signature = tensor.shapeSignature if tensor.shapeSignature is not None else []
    if any(int(d) < -1 for d in signature) or (len(signature) and len(signature) != len(shape)):
        raise _Corrupt("a tensor shape signature is invalid")
    _indices([tensor.buffer], len(buffers), "a tensor buffer")
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale):
        zeros = q.zeroPoint if q.zeroPoint is not None else []
        if len(zeros) not in (0, len(q.scale)) or not np.all(np.isfinite(q.scale)):
            raise _Corrupt("a tensor's quantization parameters are inconsistent")
        if len(q.scale) > 1 and not 0 <= q.quantizedDimension < max(len(shape), 1):
            raise _Corrupt("a tensor's quantized dimension is out of range")
        if len(q.scale) > 1 and shape and len(q.scale) != shape[q.quantizedDimension]:
            raise _Corrupt("a tensor has a scale count unlike its quantized dimension")
    data = buffers[tensor.buffer].data if buffers else None
    bits = _TYPE_BITS.get(tensor.type)
    if data is not None and len(data) and bits and tensor.sparsity is None:
        count = int(np.prod(shape, dtype=np.int64))
        expected = (count * bits + 7) // 8
        if len(data) != expected and not (bits < 8 and len(data) == count):  # sub-byte types: packed or not
            raise _Corrupt(f"a constant tensor of shape {shape} has {len(data)} bytes of data, not {expected}")


def parse(flatbuffer: bytes, source: str = "flatbuffer"):
    """The flatbuffer as a mutable `ModelT`, after checking that it is one.

    Every vector length, table, index (operator codes, tensors, buffers,
    subgraphs, metadata), enum, string and constant-buffer size is checked
    before use; an inconsistency is an error, never a best guess.

    Raises:
      TfcError: not a TFLite flatbuffer (wrong identifier, truncated, corrupt or inconsistent).
    """
    schema = schema_module()
    if len(flatbuffer) < 8 or flatbuffer[4:8] != TFLITE_IDENTIFIER:
        raise TfcError(f"{source} is not a TFLite flatbuffer (no TFL3 identifier)")
    data = bytes(flatbuffer)
    try:
        root = schema.Model.GetRootAsModel(data, 0)
        _check_tables(root, len(data))
        model = schema.ModelT.InitFromObj(root)
        _check_model(model, len(data))
    except _Corrupt as e:
        raise TfcError(f"{source} is a corrupt TFLite flatbuffer ({e})") from e
    except Exception as e:  # A damaged flatbuffer raises anything from struct.error to IndexError.
        raise TfcError(f"{source} is a truncated or corrupt TFLite flatbuffer ({type(e).__name__})") from e
    return model


def serialize(model) -> bytes:
    import flatbuffers  # pylint: disable=import-outside-toplevel
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def op_name(model, op) -> str:
    """The builtin operator name (CONV_2D, …) or CUSTOM:<code> / FLEX:<code>."""
    schema = schema_module()
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = text(code.customCode)
        return ("FLEX:" + custom[4:]) if custom.startswith("Flex") else "CUSTOM:" + custom
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(builtin, f"BUILTIN_{builtin}")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main subgraph.

    Attributes:
      index: tensor index.
      name: TFLite name (";"-joined TF op names for fused tensors).
      dtype: numpy dtype.
      shape: dimensions.
      scales, zero_points: quantization parameters ([] when float).
      constant: holds data in the flatbuffer (a weight).
    """
    index: int
    name: str
    dtype: np.dtype
    shape: tuple
    scales: tuple
    zero_points: tuple
    constant: bool


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One operator, in execution order."""
    index: int
    name: str
    inputs: tuple
    outputs: tuple


def tensors(model) -> List[TensorInfo]:
    result = []
    for i, t in enumerate(model.subgraphs[0].tensors):
        q = t.quantization
        scales = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else []))
        zeros = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else []))
        buffer = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        constant = buffer is not None and ((buffer.data is not None and len(buffer.data) > 0) or bool(buffer.size))
        result.append(TensorInfo(index=i, name=text(t.name), dtype=np.dtype(TENSOR_DTYPES.get(t.type, np.void)),
                                 shape=tuple(int(d) for d in (t.shape if t.shape is not None else [])),
                                 scales=scales, zero_points=zeros, constant=constant))
    return result


def operators(model) -> List[OpInfo]:
    return [OpInfo(index=i, name=op_name(model, op), inputs=tuple(int(t) for t in op.inputs),
                   outputs=tuple(int(t) for t in op.outputs))
            for i, op in enumerate(model.subgraphs[0].operators)]


def layer_label(tensor_name: str) -> str:
    """The layer scope of the main op a TFLite tensor stands for ("conv2d_3_1" for conv;bias;relu)."""
    parts = tensor_name.split(";")
    main = next((p for p in parts if p.rsplit("/", 1)[-1] in ("convolution", "MatMul", "depthwise", "Conv2D",
                                                               "BiasAdd", "Add", "AddV2", "concat")), parts[0])
    segments = main.split("/")
    return segments[-2] if len(segments) >= 2 else segments[0]


def expose_all_tensors(flatbuffer: bytes) -> bytes:
    """The same model with every operator output also a subgraph output.

    Delegates (XNNPACK) only write tensors that leave their partition, so this
    is how intermediate values of a delegated run become visible.
    """
    model = parse(flatbuffer)
    subgraph = model.subgraphs[0]
    outputs = list(subgraph.outputs)
    for op in subgraph.operators:
        outputs.extend(int(t) for t in op.outputs if t >= 0 and t not in outputs)
    subgraph.outputs = outputs
    return serialize(model)


# The metadata buffer tfcompress wrote before it wrote the standard TFLite Metadata
# (`export.metadata`): a Model.metadata entry of this name holding UTF-8 JSON.
# Now only a BGR channel order is written there; older files hold the input
# normalization and labels, which `export.metadata.read` still reads.
METADATA_NAME = "tfcompress.metadata"


def check_metadata(doc) -> None:
    """Checks an older tfcompress JSON metadata document (ValueError/KeyError/TypeError if malformed)."""
    norm = doc["input_normalization"]
    mean, std = [norm[k] if isinstance(norm[k], list) else [norm[k]] for k in ("mean", "std")]
    values = [float(v) for v in mean + std if not isinstance(v, bool)]
    if len(values) != len(mean) + len(std) or not mean or len(mean) != len(std) or \
            not all(np.isfinite(values)) or min(float(v) for v in std) <= 0:
        raise ValueError("input_normalization needs as many finite means as positive stds")
    if norm.get("channel_order", "rgb") not in ("rgb", "bgr"):
        raise ValueError("channel_order must be rgb or bgr")
    labels = doc.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("labels must be a list of strings")
