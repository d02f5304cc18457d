"""Any artifact, run the same way: TF graphs, TFLite flatbuffers and ONNX models.

`open_artifact` picks the runtime by the file:
- SavedModel directory (including eightbit ones from quantize_graph),
  `.keras`, `.h5`, frozen `.pb`: loaded with `io.loaders` (safe mode, unsafe
  ops refused) and run as a frozen graph in a TF session;
- `.tflite`: the LiteRT interpreter (`ai_edge_litert`), with XNNPACK (the
  default) or only the builtin kernels;
- `.onnx`: onnxruntime on the CPU.

Every artifact takes float NHWC batches (normalized as for the float model)
and returns float outputs, so agreement is always measured on the same
footing.  For an int8/uint8 TFLite model the float input is quantized with the
model's own scale and zero point (`QuantizedIO.QUANTIZE`), or raw pixels are
fed (`QuantizedIO.PIXELS`) when the model's input quantization is exactly the
pixel normalization.
"""

import dataclasses
import os
import statistics
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.export.litert import LiteRTRunner, QuantizedIO, check_untrusted


@dataclasses.dataclass(frozen=True)
class Cost:
    """Parameters (weights and biases of conv/depthwise/dense ops) and multiply-accumulates per image."""
    params: int
    macs: int


class Artifact:
    """A runnable model with one NHWC image input and a first output."""
    kind = ""

    def __init__(self, path: str):
        self.path = path

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        raise NotImplementedError

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Float outputs [B, ...] for a float NHWC batch."""
        raise NotImplementedError

    def cost(self) -> Cost:
        raise NotImplementedError

    def size(self):
        """`evaluate.measure.Size` of what is deployed: the file (or SavedModel folder) as stored."""
        from tfcompress.evaluate.measure import path_size  # pylint: disable=import-outside-toplevel
        return path_size(self.path)

    def latency(self, sample: np.ndarray, runs: int = 50, warmup: int = 5) -> List[float]:
        """Seconds per call for one image (batch 1), `runs` timed calls after `warmup` untimed ones."""
        x = sample[:1]
        for _ in range(warmup):
            self.predict(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.predict(x)
            times.append(time.perf_counter() - start)
        return times

    def close(self) -> None:
        pass


def median_ms(times: List[float]) -> float:
    return statistics.median(times) * 1e3


def interleaved_latency(flatbuffers: Sequence[bytes], sample: np.ndarray, runs: int, blocks: int = 5,
                        threads: int = 1) -> List[float]:
    """Median seconds per invoke (batch 1, LiteRT with XNNPACK) of each flatbuffer, measured interleaved.

    Only the interpreter's invoke is timed, the input fed once beforehand in
    the model's own input type: an app hands a uint8 model its pixels and a
    float model its floats, so converting a float image to a quantized input
    (or reading outputs back) in Python is not the model's time.  Timing that
    too (as this did before) added 5-8 µs to the float-I/O models of three
    zoo nets and 13-18 µs to our integer-I/O ones, on models of 30-120 µs.

    Each round runs every model once, in a fresh seeded random order: a run
    is slower right after a heavy one (int16x8's reference kernels take ~25x
    longer and evict the caches), and a fixed or merely rotated order would
    always charge that to the same neighbour.  Interpreters are re-created in
    each of `blocks` blocks, in shuffled order, for the same reason; `runs`
    timed invokes per model are spread over the blocks.
    """
    rng = np.random.default_rng(0)
    times = [[] for _ in flatbuffers]
    per_block = -(-runs // blocks)
    x = sample[:1]
    for _ in range(blocks):
        runners = {int(i): LiteRTRunner(flatbuffers[i], threads=threads) for i in rng.permutation(len(flatbuffers))}
        for runner in runners.values():
            runner.set_input(x[0])
        for _ in range(5):
            for runner in runners.values():
                runner.invoke()
        for _ in range(per_block):
            for i in rng.permutation(len(flatbuffers)):
                start = time.perf_counter()
                runners[int(i)].invoke()
                times[int(i)].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


class KerasLatency:
    """Times Keras models in LiteRT: each converted to float32 .tflite, all timed in one interleaved run.

    A callable for block dropping (`prune.blocks.Latency`).  The first model
    of a call is usually the same original every time, so its flatbuffer is
    kept from the previous call (by identity) instead of converted again.

    Args:
      sample: an input batch; its first image is fed.
      runs: timed invokes per model (see `interleaved_latency`).
      threads: LiteRT threads.
    """

    def __init__(self, sample: np.ndarray, runs: int = 60, threads: int = 1):
        self.sample, self.runs, self.threads = sample[:1], runs, threads
        self._first = None  # (model, its flatbuffer)

    def __call__(self, models) -> List[float]:
        from tfcompress.export.tflite import keras_float_flatbuffer  # pylint: disable=import-outside-toplevel
        models = list(models)
        if self._first is None or self._first[0] is not models[0]:
            self._first = (models[0], keras_float_flatbuffer(models[0]))
        flatbuffers = [self._first[1]] + [keras_float_flatbuffer(m) for m in models[1:]]
        return interleaved_latency(flatbuffers, self.sample, self.runs, threads=self.threads)


class GraphArtifact(Artifact):
    """A TF model (SavedModel, .keras, .h5, frozen .pb, or eightbit SavedModel) run as a frozen graph."""
    kind = "tf"

    def __init__(self, path: str, threads: int = 0, allow_unsafe_ops: bool = False):
        super().__init__(path)
        from tfcompress.graph.runner import GraphRunner
        from tfcompress.io.loaders import load_model
        self.model = load_model(path, allow_unsafe_ops=allow_unsafe_ops)
        sig = self.model.image_input()
        self._shape = (1,) + tuple(int(d) for d in sig.shape[1:])
        self.runner = GraphRunner(self.model.graph_def, [sig.tensor], [self.model.outputs[0].tensor], threads=threads)

    @property
    def input_shape(self):
        return self._shape

    def predict(self, batch):
        return np.asarray(self.runner.run(batch)[0], np.float32)

    def size(self):
        """A .keras or .h5 file is sized by its weights, the constants of its frozen graph: the file also
        holds optimizer state and the architecture's JSON, which no exported model carries."""
        if not self.path.lower().endswith((".keras", ".h5")):
            return super().size()
        from tensorflow.python.framework import tensor_util  # pylint: disable=import-outside-toplevel
        from tfcompress.evaluate.measure import bytes_size  # pylint: disable=import-outside-toplevel
        return bytes_size(b"".join(tensor_util.MakeNdarray(n.attr["value"].tensor).tobytes()
                                   for n in self.model.graph_def.node if n.op == "Const"))

    def cost(self) -> Cost:
        # Counted on the optimized graph: batch norm folded into the conv, as every exporter does.
        from tfcompress.graph.passes import optimize
        return graph_cost(optimize(self.model)[0])

    def close(self):
        self.runner.close()


class TfliteArtifact(Artifact):
    """A flatbuffer in the LiteRT interpreter (see `export.litert.LiteRTRunner`)."""
    kind = "tflite"

    def __init__(self, path: str, threads: int = 1, quantized_io: QuantizedIO = QuantizedIO.QUANTIZE,
                 xnnpack: bool = True, flatbuffer: Optional[bytes] = None, mean: float = 0.0, std: float = 255.0):
        super().__init__(path)
        if flatbuffer is None:
            if not os.path.isfile(path):
                raise TfcError(f"model {path} does not exist")
            with open(path, "rb") as f:
                flatbuffer = f.read()
            check_untrusted(flatbuffer, path)  # A user's file: LiteRT runs it in a child process first.
        self.runner = LiteRTRunner(flatbuffer, source=path, threads=threads, xnnpack=xnnpack,
                                   quantized_io=quantized_io, mean=mean, std=std)
        self.threads = threads

    @property
    def input_shape(self):
        return self.runner.input_shape

    def predict(self, batch):
        return self.runner.predict(batch)

    def cost(self) -> Cost:
        return tflite_cost(self.runner.model)


class OnnxArtifact(Artifact):
    """An ONNX model in onnxruntime (CPU), NHWC input as tf2onnx writes it."""
    kind = "onnx"

    def __init__(self, path: str, threads: int = 0):
        super().__init__(path)
        import onnx
        import onnxruntime as ort
        if not os.path.isfile(path):
            raise TfcError(f"model {path} does not exist")
        try:
            self.proto = onnx.load(path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnx and ORT raise their own types for corrupt files.
            raise TfcError(f"{path} is not a loadable ONNX model ({type(e).__name__})") from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise TfcError(f"{path}: expected one NHWC image input")
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._shape = tuple(1 if not isinstance(d, int) else d for d in inputs[0].shape)

    @property
    def input_shape(self):
        return self._shape

    def predict(self, batch):
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch.astype(np.float32)})[0],
                          np.float32)

    def cost(self) -> Cost:
        return onnx_cost(self.proto)


def open_artifact(path: str, *, threads: int = 1, quantized_io: QuantizedIO = QuantizedIO.QUANTIZE,
                  xnnpack: bool = True, allow_unsafe_ops: bool = False, mean: float = 0.0,
                  std: float = 255.0) -> Artifact:
    """Opens any supported model for evaluation (see the module docstring)."""
    lower = path.lower()
    if lower.endswith(".tflite"):
        return TfliteArtifact(path, threads=threads, quantized_io=quantized_io, xnnpack=xnnpack, mean=mean, std=std)
    if lower.endswith(".onnx"):
        return OnnxArtifact(path, threads=threads)
    return GraphArtifact(path, threads=threads, allow_unsafe_ops=allow_unsafe_ops)


# ---------------------------------------------------------------------------
# Parameter and MAC counts.  Only conv, depthwise conv and dense/matmul ops are
# counted (their weights and biases; MACs = output elements x reduction size),
# the same way for every format, so counts compare across formats.


def _conv_macs(out_shape, filter_shape, depthwise: bool) -> int:
    """out_shape NHWC (batch ignored); filter HWIO (TF) for a conv, HWCM for a depthwise conv."""
    out_elems = int(np.prod(out_shape[1:]))
    kh, kw = filter_shape[0], filter_shape[1]
    return out_elems * kh * kw * (1 if depthwise else filter_shape[2])


def graph_cost(model) -> Cost:
    """Cost of a frozen graph: float ops and their quantized (reference or fused oneDNN) forms."""
    import tensorflow as tf
    from tensorflow.python.framework import tensor_util
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(model.graph_def, name="")
    consts = {n.name: n for n in model.graph_def.node if n.op == "Const"}

    def const_shape(tensor):
        node = consts.get(tensor.op.name)
        return tuple(tensor_util.MakeNdarray(node.attr["value"].tensor).shape) if node is not None else None

    params = macs = 0
    for op in graph.get_operations():
        kind = op.type
        linear = ("Conv2D" in kind or "MatMul" in kind or "DepthwiseConv" in kind) and "Backprop" not in kind
        if not linear or len(op.inputs) < 2:
            continue
        weights = const_shape(op.inputs[1])
        if weights is None:
            continue
        params += int(np.prod(weights))
        if any(k in kind for k in ("WithBias", "BiasAdd")) and len(op.inputs) > 2:
            bias = const_shape(op.inputs[2])
            params += int(np.prod(bias)) if bias is not None else 0
        out = op.outputs[0].shape
        if "MatMul" in kind:
            macs += int(np.prod(weights))
        else:
            macs += _conv_macs(out.as_list(), weights, "Depthwise" in kind)
    # Float graphs carry the bias in a separate BiasAdd after the conv/matmul; reference eightbit graphs in
    # one after the float accumulator of one (a node named as the conv, made from its "<name>/eightbit"),
    # TF1-chain graphs in a QuantizedBiasAdd after the Requantize of one.
    names = {op.name for op in graph.get_operations()}
    for op in graph.get_operations():
        if op.type == "BiasAdd" and (op.inputs[0].op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul")
                                     or op.inputs[0].op.name + "/eightbit" in names) or \
                op.type == "QuantizedBiasAdd":
            bias = const_shape(op.inputs[1])
            params += int(np.prod(bias)) if bias is not None else 0
    return Cost(params=params, macs=macs)


def tflite_cost(model) -> Cost:
    """Cost of a TFLite model (ModelT): CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED operators."""
    from tfcompress.export import flatbuffer as fb
    infos = fb.tensors(model)
    params = macs = 0
    for op in fb.operators(model):
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        w = infos[op.inputs[1]].shape
        params += int(np.prod(w))
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            params += int(np.prod(infos[op.inputs[2]].shape))
        out = infos[op.outputs[0]].shape
        if op.name == "FULLY_CONNECTED":
            macs += int(np.prod(w))  # [units, in]
        elif op.name == "CONV_2D":  # filter [O, H, W, I]
            macs += int(np.prod(out[1:])) * w[1] * w[2] * w[3]
        else:  # depthwise filter [1, H, W, C*M]
            macs += int(np.prod(out[1:])) * w[1] * w[2]
    return Cost(params=params, macs=macs)


def onnx_cost(proto) -> Cost:
    """Cost of an ONNX model: Conv (grouped or not), Gemm and MatMul with initializer weights."""
    from onnx import numpy_helper, shape_inference
    inferred = shape_inference.infer_shapes(proto)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    inits = {t.name: numpy_helper.to_array(t).shape for t in proto.graph.initializer}
    params = macs = 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        params += int(np.prod(w))
        if len(node.input) > 2 and node.input[2] in inits:
            params += int(np.prod(inits[node.input[2]]))
        if node.op_type == "Conv":  # W [O, I/group, kh, kw]; output NCHW
            out = shapes.get(node.output[0])
            if out is None:
                raise TfcError(f"ONNX shape inference gave no shape for {node.output[0]}")
            macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        else:
            macs += int(np.prod(w))
    # tf2onnx writes a dense layer's bias as an Add after the MatMul.
    matmul_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    for node in proto.graph.node:
        if node.op_type == "Add" and len(node.input) == 2:
            a, b = node.input
            if a in matmul_outputs and b in inits or b in matmul_outputs and a in inits:
                params += int(np.prod(inits[b if b in inits else a]))
    return Cost(params=params, macs=macs)
