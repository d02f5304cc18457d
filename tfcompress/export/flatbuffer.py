"""Reading and editing TFLite flatbuffers through the schema's object API.

One place for the parsing every other module needs: operator lists, tensor
names, exposing intermediate tensors as outputs (so that a delegate has to
materialize them), and the tfcompress metadata buffer.
"""

import dataclasses
import json
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


def parse(flatbuffer: bytes, source: str = "flatbuffer"):
    """The flatbuffer as a mutable `ModelT`.

    Raises:
      TfcError: not a TFLite flatbuffer (wrong identifier, truncated or corrupt).
    """
    schema = schema_module()
    if len(flatbuffer) < 8 or flatbuffer[4:8] != TFLITE_IDENTIFIER:
        raise TfcError(f"{source} is not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
        codes = len(model.operatorCodes or [])
        for subgraph in model.subgraphs or []:
            for op in subgraph.operators or []:
                if not 0 <= op.opcodeIndex < codes:
                    raise IndexError("operator code index out of range")
    except Exception as e:  # A corrupt flatbuffer raises anything from struct.error to IndexError.
        raise TfcError(f"{source} is a truncated or corrupt TFLite flatbuffer ({type(e).__name__})") from e
    if not model.subgraphs:
        raise TfcError(f"{source} is a truncated or corrupt TFLite flatbuffer (no subgraph)")
    for buffer in model.buffers or []:
        if buffer.offset and buffer.offset + buffer.size > len(flatbuffer):
            raise TfcError(f"{source} is a truncated TFLite flatbuffer (a buffer ends past the file)")
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


# The metadata buffer tfcompress writes: Model.metadata entry with this name,
# holding UTF-8 JSON (see README, "TFLite metadata").
METADATA_NAME = "tfcompress.metadata"
METADATA_FORMAT_VERSION = 1


def with_metadata(flatbuffer: bytes, *, mean: Sequence[float], std: Sequence[float],
                  labels: Optional[Sequence[str]] = None, channel_order: str = "rgb") -> bytes:
    """Embeds input normalization (and a BGR channel order) and labels as the `tfcompress.metadata` buffer.

    An old buffer of that name is replaced.  RGB, the default, is not written.
    """
    model = parse(flatbuffer)
    schema = schema_module()
    doc = {"format": METADATA_NAME, "version": METADATA_FORMAT_VERSION,
           "input_normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std],
                                   "formula": "(pixel - mean) / std"}}
    if channel_order != "rgb":
        doc["input_normalization"]["channel_order"] = channel_order
    if labels is not None:
        doc["labels"] = list(labels)
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    entries = [m for m in (model.metadata or []) if text(m.name) != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = entries + [entry]
    return serialize(model)


def read_metadata(flatbuffer: bytes) -> Optional[Dict]:
    """The tfcompress metadata of a flatbuffer, or None if it has none."""
    model = parse(flatbuffer)
    for entry in model.metadata or []:
        if text(entry.name) == METADATA_NAME:
            data = model.buffers[entry.buffer].data
            try:
                return json.loads(bytes(np.asarray(data, np.uint8)).decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise TfcError(f"{METADATA_NAME} buffer is corrupt ({type(e).__name__})") from e
    return None
