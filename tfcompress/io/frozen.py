"""The common form every loader produces: a frozen GraphDef plus its signature."""

import dataclasses
import hashlib
from typing import Optional

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TensorSig:
    """One signature entry.

    Attributes:
      key: the signature key users see (e.g. "image", "output_0").
      tensor: the graph tensor name ("image:0").
      dtype: TF dtype name ("float32").
      shape: dimensions, None where unknown; None for unknown rank.
    """
    key: str
    tensor: str
    dtype: str
    shape: Optional[tuple]

    @property
    def node(self) -> str:
        return self.tensor.split(":")[0]


@dataclasses.dataclass
class FrozenModel:
    """A frozen inference graph: variables are Consts, no training ops.

    Attributes:
      graph_def: the GraphDef.
      inputs / outputs: signature entries, in signature order.
      source: the path it was loaded from.
      format: "saved_model", "keras", "h5" or "frozen_pb".
    """
    graph_def: tf.compat.v1.GraphDef
    inputs: list
    outputs: list
    source: str = ""
    format: str = ""

    def replace_graph(self, graph_def) -> "FrozenModel":
        return dataclasses.replace(self, graph_def=graph_def)

    def fingerprint(self) -> str:
        """sha256 of the deterministic serialization of graph and signature."""
        h = hashlib.sha256()
        h.update(self.graph_def.SerializeToString(deterministic=True))
        for sig in self.inputs + self.outputs:
            h.update(repr(dataclasses.astuple(sig)).encode())
        return h.hexdigest()

    def image_input(self) -> TensorSig:
        """The single NHWC float image input, for calibration and evaluation.

        Raises:
          TfcError: if the model does not take exactly one 4-D float input with
            known H, W, C.
        """
        from tfcompress.errors import TfcError
        if len(self.inputs) != 1:
            raise TfcError(f"model has {len(self.inputs)} inputs "
                           f"({', '.join(s.key for s in self.inputs)}); image calibration needs exactly one")
        sig = self.inputs[0]
        if sig.dtype not in ("float32", "float16", "float64") or sig.shape is None or len(sig.shape) != 4 \
                or any(d is None for d in sig.shape[1:]):
            raise TfcError(f"input {sig.key} has dtype {sig.dtype} and shape {sig.shape}; "
                           "image calibration needs a float NHWC input with known H, W, C")
        return sig


def shape_of(tensor_shape) -> Optional[tuple]:
    """A TensorShape (or TensorShapeProto) as a tuple with None for unknown dims."""
    shape = tf.TensorShape(tensor_shape)
    if shape.rank is None:
        return None
    return tuple(d if d is not None else None for d in shape.as_list())


def float_consts(graph_def):
    """Yields (node name, ndarray) for every float Const in the graph and its library."""
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes.extend(fn.node_def)
    for node in nodes:
        if node.op == "Const":
            dtype = tf.as_dtype(node.attr["dtype"].type)
            if dtype.is_floating:
                yield node.name, tf.make_ndarray(node.attr["value"].tensor)


def check_finite_weights(graph_def) -> None:
    """Raises TfcError naming the first Const holding NaN or Inf."""
    from tfcompress.errors import TfcError
    for name, value in float_consts(graph_def):
        if not np.all(np.isfinite(value.astype(np.float64))):
            bad = "NaN" if np.isnan(value.astype(np.float64)).any() else "Inf"
            raise TfcError(f"weight {name} contains {bad}; fix the model before compressing it")


def check_dtypes(model: FrozenModel) -> None:
    """Raises TfcError naming a signature tensor or Const whose dtype has no numpy form (variant, resource, ...).

    tfcompress computes on numeric tensors; such a model is refused by the dtype's name at load rather than
    failing later inside TensorFlow's conversion.
    """
    from tfcompress.errors import TfcError

    def mappable(dtype) -> bool:
        try:
            tf.as_dtype(dtype).as_numpy_dtype  # pylint: disable=expression-not-assigned
            return True
        except (TypeError, KeyError):  # KeyError: TF has no numpy type for variant and resource
            return False

    for kind, sigs in (("input", model.inputs), ("output", model.outputs)):
        for sig in sigs:
            if not mappable(sig.dtype):
                raise TfcError(f"model {model.source}: {kind} {sig.key} has dtype {sig.dtype}, which tfcompress "
                               "cannot handle (numeric and string tensors only)")
    nodes = list(model.graph_def.node)
    for fn in model.graph_def.library.function:
        nodes.extend(fn.node_def)
    for node in nodes:
        if node.op == "Const" and not mappable(node.attr["dtype"].type):
            raise TfcError(f"model {model.source}: constant {node.name} has dtype "
                           f"{tf.as_dtype(node.attr['dtype'].type).name}, which tfcompress cannot handle")
