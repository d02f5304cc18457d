"""Runs the float graph over images (or tensor data) and streams per-tensor statistics.

Protocol (cf. onnxruntime's CalibraterBase): choose tensors -> collect stats
batch by batch -> compute ranges with a calibrator.  Memory stays bounded by
the batch size and the histogram size, not by the number of images.
"""

import sys
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfcompress.data.images import Preprocessing
from tfcompress.data.source import as_source
from tfcompress.data.tensors import BoundData
from tfcompress.calibrate.stats import TensorStats
from tfcompress.graph.graph import Graph, node_name, tensor_name
from tfcompress.errors import TfcError
from tfcompress.graph.runner import SessionOwner, imported_graph
from tfcompress.io.frozen import FrozenModel
from tfcompress.io.memory import release_freed_memory

# Ops whose outputs never need a quantization range.
_SKIP_OPS = {"Const", "Shape", "Size", "Rank", "NoOp", "Assert"}


def calibration_tensors(model: FrozenModel) -> List[str]:
    """Every float32 activation tensor in the graph: first outputs of non-Const nodes, and the other
    outputs (a Split's second half) that something reads.

    This is a superset of what the eightbit graph requantizes, so one cache
    serves every quantization mode.
    """
    graph = Graph(model.graph_def, outputs=[s.tensor for s in model.outputs])
    order = graph.topo_order()
    later = sorted({tensor_name(i) for node in order for i in node.input
                    if not i.startswith("^") and not tensor_name(i).endswith(":0")})
    later_dtypes = {}
    if later:
        imported = imported_graph(model.graph_def)
        later_dtypes = {t: imported.get_tensor_by_name(t).dtype for t in later}
    later_of = {}
    for t in later:
        if later_dtypes[t] == tf.float32:
            later_of.setdefault(node_name(t), []).append(t)
    names = []
    for node in order:
        if node.op in _SKIP_OPS:
            continue
        dtype = node.attr["T"].type if "T" in node.attr else node.attr["dtype"].type if "dtype" in node.attr \
            else None
        if dtype == tf.float32.as_datatype_enum:
            names.append(node.name + ":0")
        names += later_of.get(node.name, [])
    return names


# Single-input ops through which an output's range reaches back to the tensor that decides it.
_PASS_THROUGH = {"Identity", "Softmax", "Sigmoid", "Reshape", "Squeeze", "ExpandDims", "Relu", "Relu6"}


def full_range_tensors(model: FrozenModel) -> frozenset:
    """The input, the outputs, and what reaches an output through pass-through ops only (see compute_ranges)."""
    graph = Graph(model.graph_def, outputs=[s.tensor for s in model.outputs])
    keep = {s.tensor for s in model.inputs}
    frontier = [s.tensor for s in model.outputs]
    while frontier:
        tensor = frontier.pop()
        if tensor in keep:
            continue
        keep.add(tensor)
        node = graph.node(tensor.split(":")[0])
        if node is not None and node.op in _PASS_THROUGH and node.input:
            first = node.input[0]
            frontier.append(first if ":" in first else first + ":0")
    return frozenset(keep)


def _pow2(exponent):
    """2.0 ** exponent (int64 tensor), exactly, for exponents of normal float64 numbers."""
    return tf.bitcast(tf.bitwise.left_shift(exponent + 1023, tf.constant(52, tf.int64)), tf.float64)


def _exponent(x):
    """floor(log2(x)) (int64 tensor) of positive normal float64 values, exactly, from their bits."""
    bits = tf.bitwise.right_shift(tf.bitcast(x, tf.int64), tf.constant(52, tf.int64))
    return tf.bitwise.bitwise_and(bits, tf.constant(0x7FF, tf.int64)) - 1023


class StatsRunner(SessionOwner):
    """Runs the float graph with, for every calibration tensor, its statistics reduced inside the graph.

    Only the reductions are fetched (min, max, count, per-channel sums and a histogram of at most
    MAX_BINS + 1 counts), so TensorFlow frees each activation once its reductions have run: memory is one
    forward pass's live activations, not every activation of a batch at once (and not a float64 copy of
    them).  The histogram is binned in the graph at the width `TensorStats` has reached, doubled as the
    batch's own range needs, and merged on the host (`TensorStats.add_batch`): the statistics are what
    streaming every value through `TensorStats.update` would give.  A tensor of unknown rank is fetched
    and streamed that way.

    Args:
      graph_def: the float graph.
      feeds: input tensor names, in the order batches are passed.
      tensors: the calibration tensors.
    """

    def __init__(self, graph_def, feeds, tensors):
        from tfcompress.calibrate.stats import MAX_BINS  # pylint: disable=import-outside-toplevel
        self.graph = imported_graph(graph_def)
        with self.graph.as_default():
            self.widths = tf.compat.v1.placeholder(tf.float64, [len(tensors)], name="tfcompress_stats/widths")
            spec = [tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.float64)]
            # One traced function per kind, called once per tensor: building a graph of each tensor's own
            # reduction ops would take seconds on a few hundred tensors.
            reduce = {channels: tf.function(lambda x, w, c=channels: self._reductions(x, w, c, MAX_BINS),
                                            input_signature=spec, autograph=False)
                      for channels in (False, True)}
            self.fetches = []
            for i, name in enumerate(tensors):
                x = self.graph.get_tensor_by_name(name)
                if x.shape.rank is None:
                    self.fetches.append(x)  # Streamed on the host.
                    continue
                readers = list(x.consumers())
                # Comparisons (T float32, bool out) count too, as 0 and 1, as TensorStats.update reads them.
                value = x if x.dtype == tf.float32 else tf.cast(x, tf.float32)
                self.fetches.append(reduce[x.shape.rank >= 2](value, self.widths[i]))
                # The tensor's readers wait for its statistics, so it is freed as the forward pass goes on,
                # not kept until the pass ends.
                done = self.fetches[-1][0].op
                for reader in readers:
                    reader._add_control_input(done)  # pylint: disable=protected-access
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1)
        # Grappler would spend longer on the many small reductions than one batch takes to run.
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        self.feeds = [self.graph.get_tensor_by_name(t) for t in feeds]

    @staticmethod
    def _reductions(x, width, channels: bool, max_bins: int):
        """One tensor's statistics (see the class docstring); traced once per `channels` value.

        Every temporary is float32 or int32, the size of `x` at most: no float64 copy of an activation.
        """
        flat = tf.reshape(x, [-1])
        count = tf.size(flat, out_type=tf.int64)
        lo, hi = tf.cast(tf.reduce_min(flat), tf.float64), tf.cast(tf.reduce_max(flat), tf.float64)
        if channels:
            # Per-row float32 partial sums, added in float64: [rows, C] is small.
            rows = tf.reshape(x, [tf.shape(x)[0], -1, tf.shape(x)[-1]])
            channel_sum = tf.reduce_sum(tf.cast(tf.reduce_sum(rows, axis=1), tf.float64), axis=0)
            total = tf.reduce_sum(channel_sum)
        else:
            channel_sum = tf.zeros([0], tf.float64)
            total = tf.cast(tf.reduce_sum(flat), tf.float64)
        # The sum is finite exactly when every value is (an empty tensor is skipped on the host).
        ok = tf.math.is_finite(total) & (count > 0)
        # The batch's own width (`stats.batch_width`) or the host's, whichever is coarser, as TensorStats
        # takes them.
        span = tf.maximum(tf.maximum(tf.abs(hi), tf.abs(lo)), 1e-30)
        width = tf.maximum(width, _pow2(_exponent(tf.where(ok, span, 1.0) / max_bins)))
        lo_bin = tf.cast(tf.floor(tf.where(ok, lo, 0.0) / width), tf.int64)
        hi_bin = tf.cast(tf.floor(tf.where(ok, hi, 0.0) / width), tf.int64)

        def bins(k):
            step = tf.bitwise.left_shift(tf.constant(1, tf.int64), k)
            return tf.math.floordiv(hi_bin, step) - tf.math.floordiv(lo_bin, step) + 1

        # The fewest doublings that fit the batch's range in max_bins: a float estimate, then exact checks.
        ratio = tf.cast(hi_bin - lo_bin + 1, tf.float64) / max_bins
        k = tf.maximum(tf.cast(tf.math.ceil(tf.math.log(tf.maximum(ratio, 1.0)) / np.log(2.0)), tf.int64), 0)
        k = tf.where((k > 0) & (bins(tf.maximum(k - 1, 0)) <= max_bins), k - 1, k)
        k = tf.where(bins(k) <= max_bins, k, k + 1)
        step = tf.bitwise.left_shift(tf.constant(1, tf.int64), k)
        first = tf.math.floordiv(lo_bin, step)
        batch_width = width * tf.cast(step, tf.float64)
        # floor(v / w) of a float32 v and a power-of-two w is exact in float32, and so is the difference of
        # two such integers this close together.
        idx = tf.floor(flat / tf.cast(batch_width, tf.float32)) - tf.cast(first, tf.float32)
        size = tf.cast(tf.where(ok, bins(k), 1), tf.int32)
        counts = tf.math.bincount(tf.cast(tf.where(ok, idx, tf.zeros_like(idx)), tf.int32),
                                  minlength=size, maxlength=size, dtype=tf.int64)
        return count, lo, hi, ok, channel_sum, first, batch_width, counts

    def update(self, stats: List[TensorStats], inputs) -> None:
        """Runs one batch and adds it to `stats` (one per calibration tensor, in order)."""
        widths = np.array([s.bin_width for s in stats], np.float64)
        feed = dict(zip(self.feeds, inputs))
        feed[self.widths] = widths
        results = self.session.run(self.fetches, feed)
        for s, r in zip(stats, results):
            if not isinstance(r, tuple):
                s.update(r)
                continue
            count, lo, hi, ok, channel_sum, first, width, counts = r
            if count == 0:
                continue
            if not ok:
                raise TfcError("a calibration activation is NaN or Inf; check the model and the images")
            s.add_batch(int(count), float(lo), float(hi), channel_sum, int(first), float(width), counts)


# With no batch size given, as many samples per run as keep the largest activation within this budget.
# A run's live temporaries are many times its largest activation (EfficientNetB0 at 224x224: 1.36 GB peak with
# 13 images a run, 1.08 GB with 4, in about the same time; VGG16 at 256x256 ran fastest with 1).
ACTIVATION_BUDGET_BYTES = 16 << 20
MAX_AUTO_BATCH = 32


def largest_activation_bytes(graph: tf.Graph, tensors: List[str]) -> int:
    """Bytes of the largest of `tensors` (in the imported `graph`) for one sample (unknown dimensions count
    as 1)."""
    largest = 1
    for name in tensors:
        dims = graph.get_tensor_by_name(name).shape
        if dims.rank is None:
            continue
        per_sample = 1
        for d in dims.as_list()[1:]:
            per_sample *= d if d is not None else 1
        largest = max(largest, per_sample * 4)
    return largest


def auto_batch_size(model: FrozenModel, tensors: List[str]) -> int:
    """Samples per calibration run: the largest activation of a batch stays within ACTIVATION_BUDGET_BYTES
    (1 to MAX_AUTO_BATCH samples).  A run's temporaries are a few times its largest activation, so peak
    memory is bounded by the model's widest layer, not by the batch size a user guessed.  (On VGG16 at
    256x256, 32 images a run took 3.5 GB; 1 takes 1.3 GB, and no longer.)"""
    return _batch_within_budget(largest_activation_bytes(imported_graph(model.graph_def), tensors))


def _batch_within_budget(largest: int) -> int:
    return int(min(MAX_AUTO_BATCH, max(1, ACTIVATION_BUDGET_BYTES // largest)))


def collect_stats(model: FrozenModel, images=None, prep: Optional[Preprocessing] = None, *,
                  data: Optional[BoundData] = None, batch_size: Optional[int] = None,
                  progress: bool = True) -> Dict[str, TensorStats]:
    """Streams the images (or the tensor data) through the model; returns statistics per tensor.

    Statistics are reduced inside the graph (`StatsRunner`): peak memory is one forward pass's
    activations for one batch plus fixed-size statistics, whatever the number of images.

    Args:
      model: the optimized float model.
      images: anything `data.source.as_source` takes (a folder, file paths, a pixel array, a dataset).
      prep: how pixels become input.
      data: instead of images: arrays for every input (`data.tensors.BoundData`).
      batch_size: images (samples) per graph run (memory grows with it, not with the image count); None:
        `auto_batch_size`.
      progress: show a progress bar.
    """
    tensors = calibration_tensors(model)
    stats = [TensorStats() for _ in tensors]
    if data is not None:
        feeds, total = data.tensors, len(data)
    else:
        source = as_source(images)
        feeds, total = [model.image_input().tensor], len(source)
    with StatsRunner(model.graph_def, feeds, tensors) as runner:
        largest = largest_activation_bytes(runner.graph, tensors)
        batch_size = batch_size or _batch_within_budget(largest)
        batches = data.batches(batch_size) if data is not None else \
            (([batch], len(batch)) for batch in source.batches(prep, batch_size))
        # A bar only on a terminal: in a log, its carriage returns would leave the next line (an error) mid-line.
        bar = tqdm(total=total, desc="calibrating", unit="sample" if data is not None else "img", leave=False,
                   disable=not (progress and sys.stderr.isatty()))
        for feed, count in batches:
            runner.update(stats, feed)
            bar.update(count)
        bar.close()
    del runner
    # The runner's graph, session and batch temporaries, before the next stage (a converter) starts.
    release_freed_memory(4 * batch_size * largest + model.graph_def.ByteSize())
    return dict(zip(tensors, stats))
