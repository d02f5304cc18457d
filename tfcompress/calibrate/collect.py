"""Runs the float graph over images (or tensor data) and streams per-tensor statistics.

Protocol (cf. onnxruntime's CalibraterBase): choose tensors -> collect stats
batch by batch -> compute ranges with a calibrator.  Memory stays bounded by
the batch size and the histogram size, not by the number of images.
"""

import sys
from typing import Dict, List, Optional

import tensorflow as tf
from tqdm import tqdm

from tfcompress.data.images import Preprocessing
from tfcompress.data.source import as_source
from tfcompress.data.tensors import BoundData
from tfcompress.calibrate.stats import TensorStats
from tfcompress.graph.graph import Graph, node_name, tensor_name
from tfcompress.graph.runner import GraphRunner
from tfcompress.io.frozen import FrozenModel

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
        imported = tf.Graph()
        with imported.as_default():
            tf.graph_util.import_graph_def(model.graph_def, name="")
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


def collect_stats(model: FrozenModel, images=None, prep: Optional[Preprocessing] = None, *,
                  data: Optional[BoundData] = None, batch_size: int = 32,
                  progress: bool = True) -> Dict[str, TensorStats]:
    """Streams the images (or the tensor data) through the model; returns statistics per tensor.

    Args:
      model: the optimized float model.
      images: anything `data.source.as_source` takes (a folder, file paths, a pixel array, a dataset).
      prep: how pixels become input.
      data: instead of images: arrays for every input (`data.tensors.BoundData`).
      batch_size: images (samples) per graph run (memory grows with it, not with the image count).
      progress: show a progress bar.
    """
    tensors = calibration_tensors(model)
    stats = {t: TensorStats() for t in tensors}
    if data is not None:
        feeds, total, batches = data.tensors, len(data), data.batches(batch_size)
    else:
        source = as_source(images)
        feeds, total = [model.image_input().tensor], len(source)
        batches = (([batch], len(batch)) for batch in source.batches(prep, batch_size))
    with GraphRunner(model.graph_def, feeds, tensors) as runner:
        # A bar only on a terminal: in a log, its carriage returns would leave the next line (an error) mid-line.
        bar = tqdm(total=total, desc="calibrating", unit="sample" if data is not None else "img", leave=False,
                   disable=not (progress and sys.stderr.isatty()))
        for feed, count in batches:
            for name, value in zip(tensors, runner.run(*feed)):
                stats[name].update(value)
            bar.update(count)
        bar.close()
    return stats
