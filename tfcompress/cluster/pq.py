"""Product quantization of conv and dense weights that minimizes the error of the layer's *outputs*.

After Stock, Joulin, Gribonval, Graham & Jegou, "And the Bit Goes Down:
Revisiting the Quantization of Neural Networks", arXiv:1907.05686.

Subvectors.  A k x k conv (k > 1) is split spatially: each (input channel,
filter) pair's k*k kernel slice is one subvector (d = k*k), the dimension
along which weights are most correlated.  A 1x1 conv or a dense layer is
split along its input channels into blocks of `block_size` consecutive
weights, which must divide the input width (there is no padding rule).
One codebook of `centroids` codewords serves all subvectors of a layer.

EM on activations.  With x_i the layer's input rows that meet block i in
the float network (the teacher) and x^_i the same rows in the network whose
lower layers are already quantized, subvector v_ij (block i, output j) is
coded by the codeword c minimizing || x_i v_ij - x^_i c ||^2:
- E-step: exhaustive assignment, argmin_c  c^T G_i c - 2 c^T H_i v_ij
  with G_i = x^_i^T x^_i and H_i = x^_i^T x_i;
- M-step: each codeword is the least-squares solution over its subvectors,
  c = (sum n_ic G_i)^+ (sum_i H_i sum_{j in c} v_ij), with the
  pseudo-inverse;
- an empty codeword takes over half of the most populated one (a copy of its
  codeword, both moved apart by a small seeded perturbation).
Layers are quantized bottom-up, so each one corrects the error of those
below.  After each layer its codewords are fine-tuned by distillation from
the float teacher, the gradient of a codeword being the average of its
subvectors' gradients; a global fine-tune of every codebook and a batch-norm
statistics update finish.

Storage: ceil(log2(centroids)) bits per subvector index, 32-bit codewords,
and every parameter not product-quantized (biases, batch norm, depthwise and
skipped layers) at 32 bits.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress.keras.train import SharedWeights, read_shared
from tfcompress.errors import TfcError
from tfcompress.io.keras_models import copy_model

EMPTY_PERTURBATION = 1e-3


@dataclasses.dataclass(frozen=True, kw_only=True)
class PQConfig:
    """How to product-quantize.

    Attributes:
      block_size: subvector length for 1x1 convs and dense layers (k x k convs use k*k).
      centroids: codewords per layer (2..65536).
      iterations: EM iterations per layer.
      max_rows: activation rows sampled per layer for the EM.
      max_images: images whose activations the EM samples (a seeded subset).
      layers, exclude: restrict the layers (default: every Conv2D and Dense).
      seed: seeds row sampling, initialization and empty-cluster splits.
    """
    block_size: int = 4
    centroids: int = 256
    iterations: int = 20
    max_rows: int = 8192
    max_images: int = 128
    layers: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.block_size < 1:
            raise TfcError(f"--block_size must be >= 1, got {self.block_size}")
        if not 2 <= self.centroids <= 1 << 16:
            raise TfcError(f"--centroids must be between 2 and 65536, got {self.centroids}")
        if self.iterations < 1 or self.max_rows < 1 or self.max_images < 1:
            raise TfcError("--iterations, --max_rows and --max_images must be >= 1")


@dataclasses.dataclass
class QuantizedLayer:
    """A product-quantized kernel: codebook [k, d], assignment per (block, output) and the element groups."""
    name: str
    path: str
    d: int
    codebook: np.ndarray
    assignment: np.ndarray  # [m, cout]
    groups: np.ndarray      # Kernel-shaped: codeword * d + position, for the shared gradients.
    error: float            # Relative output error after the EM.

    @property
    def index_bits(self) -> int:
        return self.assignment.size * max(1, math.ceil(math.log2(len(self.codebook))))

    @property
    def codebook_bits(self) -> int:
        return self.codebook.size * 32


def _layout(layer, config: PQConfig) -> Tuple[str, int]:
    """('spatial' | 'channel', d) for a Conv2D or Dense layer."""
    kernel = layer.kernel
    if isinstance(layer, keras.layers.Conv2D) and tuple(kernel.shape[:2]) != (1, 1):
        return "spatial", int(kernel.shape[0] * kernel.shape[1])
    cin = int(kernel.shape[-2])
    if cin % config.block_size:
        raise TfcError(f"layer {layer.name}: block size {config.block_size} does not divide its {cin} input "
                       "channels (no padding rule)")
    return "channel", config.block_size


def subvectors(kernel: np.ndarray, layout: str, d: int) -> np.ndarray:
    """The kernel as [m blocks, d, cout] subvectors."""
    cout = kernel.shape[-1]
    if layout == "spatial":
        kh, kw, cin, _ = kernel.shape
        return kernel.reshape(kh * kw, cin, cout).transpose(1, 0, 2)
    flat = kernel.reshape(-1, cout)
    return flat.reshape(flat.shape[0] // d, d, cout)


def from_subvectors(v: np.ndarray, shape: Sequence[int], layout: str) -> np.ndarray:
    if layout == "spatial":
        kh, kw, cin, cout = shape
        return v.transpose(1, 0, 2).reshape(kh, kw, cin, cout)
    return v.reshape(shape)


def _rows(layer, inputs: np.ndarray, layout: str, d: int, index: np.ndarray) -> np.ndarray:
    """The layer's input rows meeting each block: [P, m, d] (im2col rows for convs)."""
    if isinstance(layer, keras.layers.Conv2D):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        kh, kw = layer.kernel_size
        patches = tf.image.extract_patches(
            inputs, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1], rates=[1, *layer.dilation_rate, 1],
            padding=layer.padding.upper()).numpy()
        cin = inputs.shape[-1]
        rows = patches.reshape(-1, kh * kw, cin)[index]  # [P, kh*kw, cin], im2col order (kh, kw, cin).
        return rows.transpose(0, 2, 1) if layout == "spatial" else rows.reshape(len(index), -1, d)
    flat = inputs.reshape(-1, inputs.shape[-1])[index]
    return flat.reshape(len(index), -1, d)


def _row_count(layer, inputs_shape) -> int:
    if isinstance(layer, keras.layers.Conv2D):
        out = layer.compute_output_shape(inputs_shape)
        return int(np.prod(out[:-1]))
    return int(np.prod(inputs_shape[:-1]))


def em(v: np.ndarray, g_hat: np.ndarray, h: np.ndarray, k: int, iterations: int,
       rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(codebook [k, d], assignment [m, cout]) minimizing sum_ij || x_i v_ij - x^_i c_a(ij) ||^2.

    v: [m, d, cout] subvectors; g_hat: [m, d, d] = x^_i^T x^_i; h: [m, d, d] = x^_i^T x_i.
    """
    m, d, cout = v.shape
    flat = v.transpose(0, 2, 1).reshape(-1, d)
    codebook = flat[rng.choice(len(flat), size=k, replace=False)].astype(np.float64)
    hv = np.einsum("mde,mej->mdj", h, v)  # H_i v_ij, fixed through the iterations.
    assignment = None
    for _ in range(iterations):
        # E-step: cost(c) = c^T G_i c - 2 c^T H_i v_ij, for every block i, output j and codeword c.
        quad = np.einsum("kd,mde,ke->mk", codebook, g_hat, codebook)
        cross = np.einsum("kd,mdj->mkj", codebook, hv)
        new = np.argmin(quad[:, :, None] - 2.0 * cross, axis=1)  # [m, cout]
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        # M-step: the least-squares codewords.
        onehot = np.zeros((m, cout, k))
        np.put_along_axis(onehot, assignment[:, :, None], 1.0, axis=2)
        counts = onehot.sum(axis=1)  # [m, k]
        a = np.einsum("mk,mde->kde", counts, g_hat)
        b = np.einsum("mdj,mjk->kd", hv, onehot)
        sizes = counts.sum(axis=0)
        for c in np.flatnonzero(sizes > 0):
            codebook[c] = np.linalg.pinv(a[c]) @ b[c]
        # Empty codewords split the most populated ones.
        for c in np.flatnonzero(sizes == 0):
            big = int(np.argmax(sizes))
            noise = EMPTY_PERTURBATION * rng.standard_normal(d) * (np.abs(codebook[big]).mean() + 1e-12)
            codebook[c], codebook[big] = codebook[big] + noise, codebook[big] - noise
            members = np.argwhere(assignment == big)
            half = members[rng.permutation(len(members))[: len(members) // 2]]
            assignment[half[:, 0], half[:, 1]] = c
            sizes[c], sizes[big] = len(half), sizes[big] - len(half)
    return codebook, assignment


def _layers(model, config: PQConfig) -> Tuple[List[keras.layers.Layer], Dict[str, str]]:
    names = {l.name for l in model.layers}
    unknown = sorted((set(config.layers) | set(config.exclude)) - names)
    if unknown:
        raise TfcError(f"no layer named {', '.join(unknown)} in the model")
    chosen, skipped = [], {}
    for layer in model.layers:
        if (config.layers and layer.name not in config.layers) or layer.name in config.exclude:
            continue
        if type(layer).__name__ not in ("Conv2D", "Dense"):
            if config.layers:
                raise TfcError(f"layer {layer.name} is a {type(layer).__name__}; product quantization takes "
                               "Conv2D and Dense layers")
            if type(layer).__name__ in ("DepthwiseConv2D", "SeparableConv2D"):
                skipped[layer.name] = "depthwise kernels are left float"
            continue
        kernel = layer.kernel
        layout, d = _layout(layer, config)
        count = int(np.prod(kernel.shape)) // d
        if count <= config.centroids:
            skipped[layer.name] = f"{count} subvectors, not more than {config.centroids} codewords"
            continue
        chosen.append(layer)
    if not chosen:
        raise TfcError("no Conv2D or Dense layer has more subvectors than --centroids; nothing to quantize")
    return chosen, skipped


def _groups(assignment: np.ndarray, d: int, shape, layout: str) -> np.ndarray:
    """Kernel-shaped codeword * d + position of every element."""
    g = assignment[:, None, :] * d + np.arange(d)[None, :, None]  # [m, d, cout]
    return from_subvectors(g, shape, layout).astype(np.int64)


def quantize_layer(student, teacher, layer_name: str, images: np.ndarray, config: PQConfig,
                   rng: np.random.Generator) -> QuantizedLayer:
    """Runs the EM for one layer of `student` (its lower layers already quantized) and sets its kernel."""
    layer = student.get_layer(layer_name)
    layout, d = _layout(layer, config)
    images = images[np.sort(rng.choice(len(images), size=min(len(images), config.max_images), replace=False))]
    x_float = keras.Model(teacher.inputs, teacher.get_layer(layer_name).input).predict(images, verbose=0)
    x_hat = keras.Model(student.inputs, layer.input).predict(images, verbose=0)
    total = _row_count(layer, x_hat.shape)
    index = np.sort(rng.choice(total, size=min(total, config.max_rows), replace=False))
    xf = _rows(layer, x_float, layout, d, index).astype(np.float64)  # [P, m, d]
    xq = _rows(layer, x_hat, layout, d, index).astype(np.float64)
    g_hat = np.einsum("pmd,pme->mde", xq, xq)
    h = np.einsum("pmd,pme->mde", xq, xf)
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    v = subvectors(kernel, layout, d)
    codebook, assignment = em(v, g_hat, h, config.centroids, config.iterations, rng)
    quantized = codebook[assignment].transpose(0, 2, 1)  # [m, d, cout]
    # Relative output error on the sampled rows: || x v - x^ v^ || / || x v ||.
    target = np.einsum("pmd,mdj->pj", xf, v)
    approx = np.einsum("pmd,mdj->pj", xq, quantized)
    error = float(np.linalg.norm(target - approx) / max(np.linalg.norm(target), 1e-12))
    layer.kernel.assign(from_subvectors(quantized, kernel.shape, layout).astype(np.float32))
    return QuantizedLayer(layer_name, layer.kernel.path, d, codebook.astype(np.float32), assignment,
                          _groups(assignment, d, kernel.shape, layout), error)


def sharing(done: Sequence[QuantizedLayer]) -> Dict[str, SharedWeights]:
    """The trainer's weight sharing for codeword fine-tuning: gradients averaged per codeword entry."""
    return {q.path: SharedWeights(q.groups, "mean") for q in done}


def read_codebooks(model, done: Sequence[QuantizedLayer]) -> None:
    """Reads each fine-tuned codebook back from the kernel; raises if the codewords' members drifted apart."""
    variables = {v.path: v for v in model.weights}
    for q in done:
        k = len(q.codebook)
        values, spread = read_shared(variables[q.path].numpy(), q.groups, k * q.d)
        if spread > 0:
            raise TfcError(f"layer {q.name}: codeword members drifted apart during fine-tuning")
        q.codebook = np.where(np.isnan(values), q.codebook.reshape(-1), values).reshape(k, q.d).astype(np.float32)


@dataclasses.dataclass
class PQResult:
    model: keras.Model
    layers: List[QuantizedLayer]
    skipped: Dict[str, str]
    float_bits: int
    compressed_bits: int


def product_quantize(model, config: PQConfig, x: np.ndarray, labels: Optional[np.ndarray], train_config,
                     *, teacher=None, layer_epochs: int = 1, progress=None) -> PQResult:
    """Quantizes every chosen layer bottom-up, fine-tunes codewords, then globally; see the module docstring.

    The EM always reconstructs the float `model`'s activations; fine-tuning
    distils from `teacher` (normally `model`) and/or uses `labels`.
    """
    from tfcompress.keras import train as trainer  # pylint: disable=import-outside-toplevel
    chosen, skipped = _layers(model, config)
    student = copy_model(model)
    rng = np.random.default_rng(config.seed)
    done: List[QuantizedLayer] = []
    layer_config = dataclasses.replace(train_config, epochs=layer_epochs)
    for layer in chosen:
        done.append(quantize_layer(student, model, layer.name, x, config, rng))
        if progress:
            progress(done[-1])
        if layer_epochs:
            saved = {l.name: l.trainable for l in student.layers}
            for l in student.layers:
                l.trainable = l.name == layer.name
            try:
                trainer.fit(student, x, labels, layer_config, teacher=teacher, shared=sharing(done[-1:]))
            finally:
                for l in student.layers:
                    l.trainable = saved[l.name]
            read_codebooks(student, done[-1:])
    if train_config.epochs:
        trainer.fit(student, x, labels, train_config, teacher=teacher, shared=sharing(done))
        read_codebooks(student, done)
    trainer.set_bn_statistics(student, trainer.batches(x, train_config.batch_size))
    result = copy_model(student)
    total = sum(int(np.prod(w.shape)) for w in result.weights)
    quantized = sum(q.groups.size for q in done)
    bits = sum(q.index_bits + q.codebook_bits for q in done) + 32 * (total - quantized)
    return PQResult(result, done, skipped, 32 * total, bits)
