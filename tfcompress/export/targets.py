"""Target preflight: which operators a target's delegate will not run, and which constraints fail.

Every Android delegate partitions the graph: an operator it does not take runs
on the CPU's builtin kernels, with a copy (and, for a DSP, a round trip) at
each partition boundary.  The preflight lists those operators and the
model-level constraints a target documents.  Op tables are taken from the
delegates' documentation:

- arm-cpu: XNNPACK delegate README ("Floating-Point Operators" and
  "Quantized Operators");
- hexagon-dsp: TFLite Hexagon delegate guide (supported ops; models must
  follow the 8-bit quantization spec, or be legacy per-tensor uint8);
- edgetpu: Coral "TensorFlow models on the Edge TPU" (supported operations and
  their known limitations; fully 8-bit quantized, at most 3 non-unit
  dimensions per tensor);
- gpu: TFLite GPU delegate guide (supported ops; float32/float16 compute);
- generic: any stock LiteRT build (builtin ops only: no custom or Flex ops).
"""

import dataclasses
from typing import Dict, FrozenSet, List

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.export import flatbuffer as fb

_XNNPACK_FLOAT = frozenset("""ABS ADD AVERAGE_POOL_2D BATCH_MATMUL CEIL CONCATENATION CONV_2D DEPTH_TO_SPACE
    DEPTHWISE_CONV_2D DEQUANTIZE DIV ELU FLOOR FULLY_CONNECTED GELU HARD_SWISH LEAKY_RELU LOGISTIC MAX_POOL_2D
    MAXIMUM MEAN MINIMUM MUL NEG PAD PRELU QUANTIZE RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR ROUND RSQRT
    SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SQRT SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB TANH TRANSPOSE
    TRANSPOSE_CONV""".split())
_XNNPACK_QUANTIZED = frozenset("""ADD CONCATENATION CONV_2D DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE ELU
    FULLY_CONNECTED LEAKY_RELU LOGISTIC MAX_POOL_2D MEAN MUL PAD PRELU QUANTIZE RESHAPE RESIZE_BILINEAR SLICE
    SPACE_TO_DEPTH SPLIT SUB TANH TRANSPOSE TRANSPOSE_CONV""".split())
_HEXAGON = frozenset("""ADD ARG_MAX ARG_MIN AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTH_TO_SPACE DEPTHWISE_CONV_2D
    DEQUANTIZE FULLY_CONNECTED HARD_SWISH L2_NORMALIZATION LOGISTIC MAX_POOL_2D MAXIMUM MEAN MINIMUM MIRROR_PAD
    MUL NEG PACK PAD QUANTIZE RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT
    SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SQUARED_DIFFERENCE STRIDED_SLICE SUB TANH TRANSPOSE
    TRANSPOSE_CONV""".split())
_EDGETPU = frozenset("""ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEQUANTIZE EXP FULLY_CONNECTED
    GATHER HARD_SWISH L2_NORMALIZATION LOGISTIC LSTM MAX_POOL_2D MAXIMUM MEAN MINIMUM MUL PACK PAD PRELU QUANTIZE
    REDUCE_MAX REDUCE_MIN RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SLICE
    SOFTMAX SPACE_TO_DEPTH SPLIT SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM TANH TRANSPOSE TRANSPOSE_CONV
    UNPACK""".split())
_GPU = frozenset("""ABS ADD AVERAGE_POOL_2D CONCATENATION CONV_2D COS DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE DIV
    ELU EXP FULLY_CONNECTED HARD_SWISH LOG LOGISTIC MAX_POOL_2D MAXIMUM MEAN MINIMUM MIRROR_PAD MUL NEG PAD POW
    PRELU QUANTIZE RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SIN SLICE SOFTMAX
    SPACE_TO_DEPTH SPLIT SQRT SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB TANH TRANSPOSE TRANSPOSE_CONV""".split())

# Operators whose fused activation the Edge TPU does not accept.
_EDGETPU_NO_FUSED_ACTIVATION = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    delegate: str
    ops: FrozenSet[str]
    description: str


TARGETS: Dict[str, Target] = {
    "arm-cpu": Target("arm-cpu", "XNNPACK", _XNNPACK_FLOAT | _XNNPACK_QUANTIZED,
                      "ARM CPU with LiteRT's default XNNPACK delegate (int8 or float)"),
    "hexagon-dsp": Target("hexagon-dsp", "Hexagon", _HEXAGON,
                          "Qualcomm Hexagon DSP (8-bit quantized only; uint8 for legacy DSP pipelines)"),
    "edgetpu": Target("edgetpu", "Edge TPU", _EDGETPU, "Coral Edge TPU (fully 8-bit quantized)"),
    "gpu": Target("gpu", "GPU", _GPU, "Mobile GPU delegate (float32/float16 compute)"),
    "generic": Target("generic", "none", frozenset(), "Any stock LiteRT build (builtin ops only)"),
}


@dataclasses.dataclass
class Preflight:
    """Result of checking a flatbuffer against a target.

    Attributes:
      target: the target name.
      unsupported_ops: op name -> how many, for ops the delegate will not run.
      failed_constraints: one sentence per failed model-level constraint.
      client_warnings: what an app's inference client (the Task Library, MediaPipe Tasks, ML Model
        Binding) will refuse or cannot know: int8/int16 image inputs, no standard metadata.  They do not
        fail the preflight (a delegate runs the model), and are printed after it.
    """
    target: str
    unsupported_ops: Dict[str, int]
    failed_constraints: List[str]
    client_warnings: List[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported_ops and not self.failed_constraints

    def lines(self) -> List[str]:
        t = TARGETS[self.target]
        warnings = [f"  client: {w}" for w in self.client_warnings]
        if self.ok:
            return [f"preflight {self.target}: ok ({t.description})"] + warnings
        out = [f"preflight {self.target}: {len(self.unsupported_ops)} op type(s) not run by the {t.delegate} "
               f"delegate, {len(self.failed_constraints)} constraint(s) failed ({t.description})"]
        out += [f"  op {name} x{n}: runs outside the {t.delegate} delegate" if t.ops else
                f"  op {name} x{n}: not a builtin op; stock LiteRT cannot run it"
                for name, n in sorted(self.unsupported_ops.items())]
        out += [f"  constraint: {c}" for c in self.failed_constraints]
        return out + warnings


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise TfcError(f"unknown --target {name!r} (choose from {', '.join(TARGETS)})")
    return TARGETS[name]


def preflight(flatbuffer: bytes, target_name: str) -> Preflight:
    """Checks a TFLite flatbuffer against a target's documented support."""
    target = get_target(target_name)
    model = fb.parse(flatbuffer)
    infos = fb.tensors(model)
    ops = fb.operators(model)
    subgraph = model.subgraphs[0]
    unsupported: Dict[str, int] = {}
    failed: List[str] = []

    def quantized8(i: int) -> bool:
        return infos[i].dtype in (np.int8, np.uint8)

    activations = sorted({t for op in ops for t in op.outputs if t >= 0})
    float_ops = sorted({op.name for op in ops if any(infos[t].dtype in (np.float32, np.float16)
                                                     for t in op.outputs if t >= 0)})
    for op in ops:
        if op.name.startswith(("CUSTOM:", "FLEX:")):
            unsupported[op.name] = unsupported.get(op.name, 0) + 1
        elif target.ops and op.name not in target.ops:
            unsupported[op.name] = unsupported.get(op.name, 0) + 1
        elif target.name == "arm-cpu" and op.outputs and infos[op.outputs[0]].dtype == np.int16:
            unsupported[f"{op.name} (int16)"] = unsupported.get(f"{op.name} (int16)", 0) + 1
        elif target.name == "arm-cpu" and op.name not in _XNNPACK_QUANTIZED and op.outputs and \
                quantized8(op.outputs[0]):
            unsupported[f"{op.name} (8-bit)"] = unsupported.get(f"{op.name} (8-bit)", 0) + 1
    io = [infos[i] for i in list(subgraph.inputs) + list(subgraph.outputs)]
    if target.name in ("hexagon-dsp", "edgetpu"):
        if float_ops:
            failed.append(f"not fully 8-bit quantized: float outputs from {', '.join(float_ops)}")
        if any(t.dtype not in (np.int8, np.uint8) for t in io):
            failed.append("inputs and outputs must be int8 or uint8, found "
                          + ", ".join(sorted({t.dtype.name for t in io})))
        if target.name == "hexagon-dsp":
            uint8 = [t for t in infos if t.dtype == np.uint8 and len(t.scales) > 1]
            if uint8:
                failed.append("uint8 tensors with per-channel scales (the legacy uint8 scheme is per-tensor; "
                              "convert with --per_tensor)")
        else:
            big = [t.name for t in infos if t.index in activations and sum(d > 1 for d in t.shape) > 3]
            if big:
                failed.append(f"{len(big)} tensor(s) with more than 3 non-unit dimensions (first: {big[0]})")
            model_ops = model.subgraphs[0].operators
            for op in ops:
                if op.name in _EDGETPU_NO_FUSED_ACTIVATION:
                    options = model_ops[op.index].builtinOptions
                    if getattr(options, "fusedActivationFunction", 0):
                        failed.append(f"{op.name} (operator {op.index}) has a fused activation")
    if target.name == "gpu":
        if any(t.dtype != np.float32 for t in io):
            failed.append("GPU delegate inputs and outputs are float32; this model has "
                          + ", ".join(sorted({t.dtype.name for t in io})) + " I/O")
        if any(infos[t].dtype == np.int16 for t in activations):
            failed.append("int16 activations (int16x8) are not supported by the GPU delegate")
    return Preflight(target=target.name, unsupported_ops=unsupported, failed_constraints=failed,
                     client_warnings=client_warnings(model, infos))


def client_warnings(model, infos) -> List[str]:
    """What the Task Library and MediaPipe Tasks refuse or cannot see (any target: the client is the app's).

    Their image pre-processing feeds uint8 pixels or normalized float32 and
    rejects other input types ("Requested one of these types: uint8/float32"),
    and it reads normalization and labels only from standard TFLite Metadata.
    """
    from tfcompress.export.metadata import METADATA_BUFFER_NAME  # pylint: disable=import-outside-toplevel
    out = []
    subgraph = model.subgraphs[0]
    first = infos[subgraph.inputs[0]] if len(subgraph.inputs) else None
    if first is not None and len(first.shape) == 4 and first.dtype not in (np.uint8, np.float32):
        out.append(f"{first.dtype.name} image input: the Task Library and MediaPipe take uint8 or float32 "
                   "images and refuse it (convert with --io=uint8 or --io=float)")
    if not any(fb.text(m.name) == METADATA_BUFFER_NAME for m in model.metadata or []):
        out.append("no TFLite Metadata: clients see no normalization and no labels (convert writes it)")
    return out
