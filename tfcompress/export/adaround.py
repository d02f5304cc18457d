"""AdaRound: learned up-or-down rounding of an int8 TFLite model's weights, layer by layer, from images.

Rounding each weight to the nearest int8 step minimizes each weight's own
error, not the layer's output error: the errors of a row's weights add up
in every output.  AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", arXiv:2004.10568) chooses, per weight, floor or
ceil of w/s by minimizing the layer's output error on data:

    min_V  || f(W x) - f(s * clip(floor(W / s) + h(V), n, p) x~) ||^2  +  lambda * sum(1 - |2 h(V) - 1|^beta)

with h the rectified sigmoid clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)
(zeta = 1.1, gamma = -0.1), started from each weight's fractional part.  The
regularizer, off for the first 20% of the iterations and then annealed from
beta = 20 to 2, drives every h to 0 or 1.  x is the layer input of the
*quantized* model with every earlier layer already rounded, f(W x) the float
model's output of the layer (the paper's asymmetric reconstruction, Sec. 4),
f the fused activation (none, ReLU, ReLU6, ReLU_N1_TO_1).

Each convolution is seen as a product of patches: at up to ROWS output
positions drawn from the images, the input patch (what `tf.image.extract_patches`
gives, with the layer's strides, dilation and padding) times the filter as a
[kernel * in, out] matrix; a depthwise convolution sums per channel; a
fully connected layer has one row per image.  The problem is then small and
linear, and is solved in numpy float32 (seeded, so the same model and images
give the same bytes).  The scales, zero points and int32 biases are the
quantizer's; only int8 weight values change.  A layer whose learned rounding
does not lower its output error on rows held out of the optimization
(HELD_OUT of them) keeps nearest rounding.
"""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.export import flatbuffer as fb
from tfcompress.export.empirical_bias import LINEAR, _ACTIVE, _activation, _buffer_readers, float_layers
from tfcompress.export.litert import tensor_values

ZETA, GAMMA = 1.1, -0.1
# Fewer calibration images than this cannot show a layer the spread of its inputs.
MIN_IMAGES = 16
# Images read (the calibration set's first ones), and output positions sampled from them per layer.
MAX_IMAGES = 128
ROWS = 8192
# The share of the sampled rows kept out of the optimization, to judge it.
HELD_OUT = 0.2


@dataclasses.dataclass(frozen=True)
class AdaRoundConfig:
    """The optimization of one layer's rounding (defaults: the paper's, with fewer iterations).

    Attributes:
      iterations: Adam steps per layer (the paper uses 10,000 on ImageNet-size layers).
      batch_rows: rows (output positions) per step.
      regularization: lambda, the weight of the rounding regularizer.
      beta: (start, end) of the regularizer's annealed exponent.
      warm_start: the share of the iterations without the regularizer.
      learning_rate: Adam's step size on V.
      seed: the row sampling's.
    """
    iterations: int = 2000
    batch_rows: int = 512
    regularization: float = 0.01
    beta: Tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 1 or self.batch_rows < 1 or self.regularization < 0 or self.learning_rate <= 0:
            raise TfcError("AdaRound needs positive iterations, batch rows and learning rate, and a "
                           "non-negative regularization")
        if not 0.0 <= self.warm_start < 1.0:
            raise TfcError(f"AdaRound's warm start must be in [0, 1), got {self.warm_start}")


@dataclasses.dataclass(frozen=True)
class Rounded:
    """One layer: its output tensor, the share of weights rounded the other way than nearest, and the
    mean squared output error on the held-out rows with nearest and with learned rounding."""
    tensor: str
    flipped: float
    error_nearest: float
    error_learned: float

    @property
    def kept(self) -> bool:
        """True if learned rounding was written (it lowered the error)."""
        return self.error_learned < self.error_nearest


@dataclasses.dataclass(frozen=True)
class Skipped:
    tensor: str
    reason: str


@dataclasses.dataclass
class _Layer:
    """A linear layer as rows x matrix: `weights` [K, O] float (or [K, C] per channel for a depthwise conv)."""
    kind: str
    tensor: str
    reference: str        # The float model's name of the output.
    op: object
    weight: object        # The int8 weight tensor (TensorT).
    weights: np.ndarray   # Float weights in the matrix layout.
    scales: np.ndarray    # [O] (per channel) or [1].
    bias: np.ndarray      # [O] float32.
    lo: float
    hi: float


def _array(model, tensor) -> Optional[np.ndarray]:
    buffer = model.buffers[tensor.buffer]
    if buffer.data is None or len(buffer.data) == 0:
        return None
    dtype = fb.TENSOR_DTYPES.get(tensor.type)
    if dtype is None:
        return None
    return np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), dtype).reshape(tuple(tensor.shape))


def _to_matrix(kind: str, w: np.ndarray) -> np.ndarray:
    """TFLite filter layout -> [K, O]: CONV_2D [O, H, W, I], DEPTHWISE [1, H, W, C], FULLY_CONNECTED [O, I]."""
    if kind == "CONV_2D":
        return w.transpose(1, 2, 3, 0).reshape(-1, w.shape[0])
    if kind == "DEPTHWISE_CONV_2D":
        return w.reshape(-1, w.shape[-1])
    return w.T


def _from_matrix(kind: str, m: np.ndarray, shape: tuple) -> np.ndarray:
    if kind == "CONV_2D":
        o, h, w, i = shape
        return m.reshape(h, w, i, o).transpose(3, 0, 1, 2)
    if kind == "DEPTHWISE_CONV_2D":
        return m.reshape(shape)
    return m.T


def _layer(quantized, float_model, op, float_ops) -> Tuple[Optional[_Layer], str]:
    """(the layer, "") or (None, why it is skipped)."""
    subgraph = quantized.subgraphs[0]
    kind = fb.op_name(quantized, op)
    tensor = fb.text(subgraph.tensors[op.outputs[0]].name)
    activation = _activation(quantized, op)
    if activation not in _ACTIVE:
        return None, f"fused activation {activation}"
    weight = subgraph.tensors[op.inputs[1]]
    q = weight.quantization
    if fb.TENSOR_DTYPES.get(weight.type) != np.int8 or q is None or q.scale is None or len(q.scale) == 0:
        return None, "weights are not int8"
    if any(int(z) != 0 for z in (q.zeroPoint if q.zeroPoint is not None else [])):
        return None, "weights are not symmetric"
    float_op = float_ops.get(id(op))
    if float_op is None:
        return None, "no float layer in the same place"
    fsub = float_model.subgraphs[0]
    w = _array(float_model, fsub.tensors[float_op.inputs[1]])
    stored = _array(quantized, weight)
    if w is None or stored is None or w.dtype != np.float32 or w.shape != stored.shape:
        return None, "its float weights are not constants of the same shape"
    channels = w.shape[-1] if kind == "DEPTHWISE_CONV_2D" else w.shape[0]
    scales = np.asarray(q.scale, np.float64)
    if scales.size not in (1, channels):
        return None, "unexpected weight scales"
    matrix = _to_matrix(kind, w.astype(np.float64))
    nearest = np.clip(np.round(matrix / scales), -127, 127)
    if np.mean(nearest != _to_matrix(kind, stored.astype(np.float64))) > 0.01:
        return None, "its int8 weights are not the float weights rounded"
    bias = np.zeros(channels, np.float32)
    if len(float_op.inputs) > 2 and float_op.inputs[2] >= 0:
        b = _array(float_model, fsub.tensors[float_op.inputs[2]])
        if b is None or b.size != channels:
            return None, "its bias is not a constant"
        bias = b.astype(np.float32).reshape(-1)
    lo, hi = _ACTIVE[activation]
    return _Layer(kind=kind, tensor=tensor, reference=fb.text(fsub.tensors[float_op.outputs[0]].name), op=op,
                  weight=weight, weights=matrix, scales=scales, bias=bias, lo=lo, hi=hi), ""


def _rows(layer: _Layer, inputs: np.ndarray, outputs: np.ndarray, rng) -> Tuple[np.ndarray, np.ndarray]:
    """(input rows [R, K] (or [R, K, C] for a depthwise conv), float target rows [R, O]) at sampled positions."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    n = len(inputs)
    if layer.kind == "FULLY_CONNECTED":
        k = layer.weights.shape[0]
        x, y = inputs.reshape(-1, k), outputs.reshape(-1, layer.weights.shape[1])
        take = np.sort(rng.permutation(len(x))[:ROWS])
        return x[take].astype(np.float32), y[take].astype(np.float32)
    options = layer.op.builtinOptions
    schema = fb.schema_module()
    padding = "SAME" if options.padding == schema.Padding.SAME else "VALID"
    filt = layer.weight.shape
    size = [1, int(filt[1]), int(filt[2]), 1]
    strides = [1, int(options.strideH), int(options.strideW), 1]
    rates = [1, int(options.dilationHFactor or 1), int(options.dilationWFactor or 1), 1]
    per_image = max(1, ROWS // n)
    xs, ys = [], []
    for i in range(n):
        patches = tf.image.extract_patches(inputs[i:i + 1].astype(np.float32), size, strides, rates, padding).numpy()
        patches = patches.reshape(-1, patches.shape[-1])
        target = outputs[i].reshape(-1, outputs.shape[-1])
        if len(patches) != len(target):
            raise TfcError(f"AdaRound: the patches of {layer.tensor} do not match its output positions")
        take = rng.permutation(len(patches))[:per_image]
        xs.append(patches[take])
        ys.append(target[take])
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)
    if layer.kind == "DEPTHWISE_CONV_2D":
        channels_in = inputs.shape[-1]
        x = x.reshape(len(x), -1, channels_in)
        multiplier = layer.weights.shape[1] // channels_in
        x = np.repeat(x, multiplier, axis=2) if multiplier > 1 else x
    return x, y


def _forward(layer: _Layer, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    if layer.kind == "DEPTHWISE_CONV_2D":
        return np.einsum("rkc,kc->rc", x, w) + layer.bias
    return x @ w + layer.bias


def _error(layer: _Layer, x, y, w) -> float:
    out = np.clip(_forward(layer, x, w), layer.lo, layer.hi)
    return float(np.mean(np.sum((out - y) ** 2, axis=-1)))


def _h(v: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _learn(layer: _Layer, x: np.ndarray, y: np.ndarray, config: AdaRoundConfig, rng) -> np.ndarray:
    """The learned integer weights [K, O] (rounded h: floor + 1 where h >= 0.5)."""
    s = layer.scales.astype(np.float32)
    scaled = (layer.weights / layer.scales).astype(np.float32)
    floor = np.floor(scaled)
    rest = np.clip(scaled - floor, 1e-4, 1.0 - 1e-4)
    # h(V0) = rest: invert the rectified sigmoid.
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0).astype(np.float32)
    m, u = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    warm = int(config.warm_start * config.iterations)
    for step in range(config.iterations):
        take = rng.integers(0, len(x), min(config.batch_rows, len(x)))
        xb, yb = x[take], y[take]
        sig = 1.0 / (1.0 + np.exp(-v))
        raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(raw, 0.0, 1.0)
        q = np.clip(floor + h, -127.0, 127.0)
        w = s * q
        z = _forward(layer, xb, w)
        out = np.clip(z, layer.lo, layer.hi)
        dz = (2.0 / len(xb)) * (out - yb) * ((z > layer.lo) & (z < layer.hi))
        dw = np.einsum("rkc,rc->kc", xb, dz) if layer.kind == "DEPTHWISE_CONV_2D" else xb.T @ dz
        unclipped = (raw > 0.0) & (raw < 1.0)  # Where h's clip passes a gradient.
        inside = ((floor + h) > -127.0) & ((floor + h) < 127.0) & unclipped
        dh = dw * s * inside
        if step >= warm:
            progress = (step - warm) / max(1, config.iterations - warm)
            beta = config.beta[0] + (config.beta[1] - config.beta[0]) * progress
            t = 2.0 * h - 1.0
            dh = dh - config.regularization * beta * np.abs(t) ** (beta - 1.0) * np.sign(t) * 2.0 * unclipped
        grad = dh * (ZETA - GAMMA) * sig * (1.0 - sig)
        m = b1 * m + (1 - b1) * grad
        u = b2 * u + (1 - b2) * grad * grad
        m_hat, u_hat = m / (1 - b1 ** (step + 1)), u / (1 - b2 ** (step + 1))
        v = v - config.learning_rate * m_hat / (np.sqrt(u_hat) + eps)
    return np.clip(floor + (_h(v) >= 0.5), -127, 127)


def _quantized_input(quantized, index: int, batch: np.ndarray) -> np.ndarray:
    """The model input as the int8 model sees it: quantized with its own parameters, dequantized."""
    tensor = quantized.subgraphs[0].tensors[index]
    q = tensor.quantization
    dtype = fb.TENSOR_DTYPES.get(tensor.type)
    if q is None or q.scale is None or len(q.scale) == 0 or dtype not in (np.int8, np.uint8):
        return np.asarray(batch, np.float64)
    info = np.iinfo(dtype)
    scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
    return (np.clip(np.round(batch / scale) + zero, info.min, info.max) - zero) * scale


def adaround(quantized: bytes, float_model: bytes, images: np.ndarray,
             config: AdaRoundConfig = AdaRoundConfig(), *, threads: int = 1
             ) -> Tuple[bytes, List[Rounded], List[Skipped]]:
    """Returns (the flatbuffer with learned weight rounding, [Rounded], [Skipped]).

    Args:
      quantized: the int8 (or uint8-I/O) flatbuffer, weights rounded to nearest.
      float_model: the float flatbuffer it was quantized from (the same tensor names).
      images: float NHWC calibration images (the first MAX_IMAGES are used).

    Raises:
      TfcError: fewer than MIN_IMAGES images.
    """
    images = np.asarray(images[:MAX_IMAGES], np.float32)
    if len(images) < MIN_IMAGES:
        raise TfcError(f"AdaRound needs at least {MIN_IMAGES} calibration images, got {len(images)}")
    model = fb.parse(quantized)
    float_parsed = fb.parse(float_model)
    float_ops = float_layers(model, float_parsed)
    subgraph = model.subgraphs[0]
    inputs = set(int(i) for i in subgraph.inputs)
    rng = np.random.default_rng(config.seed)
    current = quantized
    rounded: List[Rounded] = []
    skipped: List[Skipped] = []
    readers = _buffer_readers(model)
    for op in subgraph.operators:
        if fb.op_name(model, op) not in LINEAR or len(op.inputs) < 2:
            continue
        if readers.get(subgraph.tensors[op.inputs[1]].buffer, 0) != 1:
            skipped.append(Skipped(fb.text(subgraph.tensors[op.outputs[0]].name), "its weights are shared"))
            continue
        layer, why = _layer(model, float_parsed, op, float_ops)
        if layer is None:
            skipped.append(Skipped(fb.text(subgraph.tensors[op.outputs[0]].name), why))
            continue
        source = int(op.inputs[0])
        source_name = fb.text(subgraph.tensors[source].name)
        if source in inputs:
            x_in = _quantized_input(model, source, images)
        else:
            x_in = tensor_values(current, [source_name], images, threads=threads).get(source_name)
        target = tensor_values(float_model, [layer.reference], images, threads=threads).get(layer.reference)
        if x_in is None or target is None:
            skipped.append(Skipped(layer.tensor, "its input or float output cannot be read"))
            continue
        x, y = _rows(layer, x_in, target, rng)
        # Rows held out of the optimization decide whether the learned rounding is kept: a dense layer
        # sees one row per image, few enough to overfit.
        order = rng.permutation(len(x))
        held = order[:max(1, int(round(HELD_OUT * len(x))))]
        fit = order[len(held):]
        nearest = np.clip(np.round(layer.weights / layer.scales), -127, 127)
        learned = _learn(layer, x[fit], y[fit], config, rng)
        s = layer.scales.astype(np.float32)
        before = _error(layer, x[held], y[held], (s * nearest).astype(np.float32))
        after = _error(layer, x[held], y[held], (s * learned).astype(np.float32))
        result = Rounded(layer.tensor, float(np.mean(learned != nearest)), before, after)
        rounded.append(result)
        if not result.kept:
            continue
        values = _from_matrix(layer.kind, learned, tuple(layer.weight.shape)).astype(np.int8)
        model.buffers[layer.weight.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
        current = fb.serialize(model)
    return current, rounded, skipped
