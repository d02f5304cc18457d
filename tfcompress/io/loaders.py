"""Loading SavedModel, Keras 3 `.keras`, legacy `.h5` and frozen `.pb` models.

All four become one `FrozenModel`: a frozen GraphDef (variables folded into
Consts) that keeps the signature's input and output keys.  Keras files load in
safe mode, so no Python bytecode from the file (Lambda layers, pickled
functions) is executed; graphs with ops outside the allowlist of pure ops
(file, exec, debug, dataset or unknown ops) are refused unless the caller
opts in (see `safety.py`).
"""

import os
from typing import Optional, Sequence

import tensorflow as tf
from google.protobuf import message as pb_message
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfcompress.errors import TfcError
from tfcompress.io import safety
from tfcompress.io.keras_models import load_keras
from tfcompress.io.frozen import FrozenModel, TensorSig, check_dtypes, check_finite_weights, shape_of

FORMATS = ("saved_model", "keras", "h5", "frozen_pb")


def detect_format(path: str) -> str:
    """Returns one of FORMATS for `path`, or raises TfcError."""
    if not os.path.exists(path):
        raise TfcError(f"model {path} does not exist")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")) or \
                os.path.exists(os.path.join(path, "saved_model.pbtxt")):
            return "saved_model"
        raise TfcError(f"model directory {path} has no saved_model.pb; not a SavedModel")
    lower = path.lower()
    if lower.endswith(".keras"):
        return "keras"
    if lower.endswith((".h5", ".hdf5")):
        return "h5"
    if lower.endswith((".pb", ".pbtxt")):
        if os.path.basename(lower) == "saved_model.pb":
            raise TfcError(f"{path} is the graph file of a SavedModel; pass its directory instead")
        return "frozen_pb"
    raise TfcError(f"model {path}: unknown format (expected a SavedModel directory, .keras, .h5 or .pb)")


def load_model(path: str,
               *,
               signature: str = "serving_default",
               input_names: Optional[Sequence[str]] = None,
               output_names: Optional[Sequence[str]] = None,
               allow_unsafe_ops: bool = False) -> FrozenModel:
    """Loads any supported model into a FrozenModel.

    Args:
      path: SavedModel directory, `.keras`, `.h5`/`.hdf5` or frozen `.pb`.
      signature: SavedModel signature key.
      input_names / output_names: tensor or node names, for frozen `.pb` only
        (inferred from Placeholders and unconsumed nodes when omitted).
      allow_unsafe_ops: accept graphs with ops outside the allowlist of pure ops (file, exec, debug, dataset or unknown ops).

    Returns:
      The frozen model.

    Raises:
      TfcError: missing, corrupt or unsafe model; NaN/Inf weights; a dtype with no numpy form.
    """
    fmt = detect_format(path)
    if (input_names or output_names) and fmt != "frozen_pb":
        raise TfcError("--input_names/--output_names apply to frozen .pb graphs only")
    if fmt == "saved_model":
        safety.check_saved_model(path, allow_unsafe_ops)  # Before TF loads it: loading runs its initializers.
        model = _load_saved_model(path, signature)
    elif fmt in ("keras", "h5"):
        model = _load_keras(path, fmt)
    else:
        model = _load_frozen_pb(path, input_names, output_names, allow_unsafe_ops)
    safety.check_safe(model.graph_def, path, allow_unsafe_ops)
    check_dtypes(model)
    check_finite_weights(model.graph_def)
    return model


def _freeze_concrete(fn, source: str, fmt: str, input_keys=None) -> FrozenModel:
    """Freezes a ConcreteFunction, keeping its structured signature keys."""
    try:
        frozen = convert_variables_to_constants_v2(fn)
    except Exception as e:  # TF raises a zoo of types here.
        raise TfcError(f"cannot freeze {source}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    graph_def = frozen.graph.as_graph_def()
    spec_args, spec_kwargs = fn.structured_input_signature
    flat_specs = tf.nest.flatten((spec_args, spec_kwargs))
    if input_keys is None:
        input_keys = sorted(spec_kwargs) if spec_kwargs else [s.name for s in flat_specs]
    placeholders = [t for t in frozen.inputs if t.dtype != tf.resource][:len(flat_specs)]
    inputs = [TensorSig(key=k, tensor=t.name, dtype=t.dtype.name, shape=shape_of(t.shape))
              for k, t in zip(input_keys, placeholders)]
    outputs_struct = fn.structured_outputs
    if isinstance(outputs_struct, dict):
        out_keys = sorted(outputs_struct)
    elif isinstance(outputs_struct, (list, tuple)):
        out_keys = [f"output_{i}" for i in range(len(outputs_struct))]
    else:
        out_keys = ["output_0"]
    outputs = [TensorSig(key=k, tensor=t.name, dtype=t.dtype.name, shape=shape_of(t.shape))
               for k, t in zip(out_keys, frozen.outputs)]
    return FrozenModel(graph_def=graph_def, inputs=inputs, outputs=outputs, source=source, format=fmt)


def _load_saved_model(path: str, signature: str) -> FrozenModel:
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:
        raise TfcError(f"cannot load SavedModel {path}: corrupt or unreadable "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    signatures = getattr(loaded, "signatures", {})
    if signature not in signatures:
        raise TfcError(f"SavedModel {path} has no signature {signature!r} "
                       f"(it has: {', '.join(sorted(signatures)) or 'none'})")
    return _freeze_concrete(signatures[signature], path, "saved_model")


def _load_keras(path: str, fmt: str) -> FrozenModel:
    return freeze_keras_model(load_keras(path), path, fmt)


def freeze_keras_model(model, source: str = "<keras>", fmt: str = "keras") -> FrozenModel:
    """Freezes an in-memory Keras 3 model in inference mode.

    Input keys are the Keras input names; output keys are output_0, output_1, …
    (dict outputs keep their keys), as `keras.Model.export` names them.
    """
    inputs = model.inputs
    if not inputs:
        raise TfcError(f"Keras model {source} is not built (no inputs)")
    specs = [tf.TensorSpec(shape=t.shape, dtype=t.dtype, name=t.name) for t in inputs]
    keys = [t.name for t in inputs]

    if len(specs) == 1:
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs[0])
    else:
        fn = tf.function(lambda *xs: model(list(xs), training=False)).get_concrete_function(*specs)
    return _freeze_concrete(fn, source, fmt, input_keys=keys)


def _strip_port(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _load_frozen_pb(path: str, input_names, output_names, allow_unsafe_ops: bool = False) -> FrozenModel:
    graph_def = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as f:
            data = f.read()
        if path.lower().endswith(".pbtxt"):
            from google.protobuf import text_format
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (pb_message.DecodeError, UnicodeDecodeError, ValueError) as e:
        raise TfcError(f"cannot parse frozen graph {path}: corrupt or not a GraphDef") from e
    return frozen_graph(graph_def, input_names, output_names, source=path, allow_unsafe_ops=allow_unsafe_ops)


def frozen_graph(graph_def, input_names: Optional[Sequence[str]] = None,
                 output_names: Optional[Sequence[str]] = None, *, source: str = "<graph_def>",
                 allow_unsafe_ops: bool = False) -> FrozenModel:
    """A FrozenModel from a frozen GraphDef (a copy; `graph_def` is not changed).

    Inputs default to the Placeholders, outputs to the nodes nothing consumes.  A Const named as an input
    becomes a Placeholder of its dtype and shape, so a graph whose data is baked in as constants (as TF1's
    quantize_graph tests built theirs) can be fed.  Attributes a node leaves unset get their op's
    defaults, as TensorFlow's importer would give them (a MaxPool without `T` is float32).

    Raises:
      TfcError: an empty, unsafe or unimportable graph, variables, or a named node that does not exist.
    """
    if not graph_def.node:
        raise TfcError(f"frozen graph {source} is empty or not a GraphDef")
    safety.check_safe(graph_def, source, allow_unsafe_ops)  # Before TensorFlow imports anything.
    if any(n.op in ("VarHandleOp", "VariableV2", "Variable") for n in graph_def.node):
        raise TfcError(f"graph {source} still has variables; freeze it (or pass the SavedModel)")
    copy = tf.compat.v1.GraphDef()
    copy.CopyFrom(graph_def)
    graph_def = copy
    _fill_default_attrs(graph_def, source)
    by_name = {n.name: n for n in graph_def.node}
    if not input_names:
        input_names = [n.name for n in graph_def.node if n.op in ("Placeholder", "PlaceholderV2")]
    if not output_names:
        consumed = {i.lstrip("^").split(":")[0] for n in graph_def.node for i in n.input}
        output_names = [n.name for n in graph_def.node
                        if n.name not in consumed and n.op not in ("Const", "NoOp", "Placeholder", "Assert")]
    if not input_names or not output_names:
        raise TfcError(f"cannot tell the inputs/outputs of {source}; pass --input_names and --output_names")
    for name in list(input_names) + list(output_names):
        if _strip_port(name) not in by_name:
            raise TfcError(f"frozen graph {source} has no node {_strip_port(name)!r}")
    for name in input_names:
        node = by_name[_strip_port(name)]
        if node.op == "Const":
            if ":" in name and not name.endswith(":0"):
                raise TfcError(f"input {name}: a Const has one output, :0")
            _const_to_placeholder(node)
    # Shapes and dtypes come from importing the graph once.
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except Exception as e:
        raise TfcError(f"cannot import frozen graph {source}: {str(e).splitlines()[0]}") from e

    def sig(name):
        node = _strip_port(name)
        tensor = name if ":" in name else name + ":0"
        try:
            t = graph.get_tensor_by_name(tensor)
        except (KeyError, ValueError) as e:
            raise TfcError(f"frozen graph {source} has no tensor {tensor!r}") from e
        return TensorSig(key=node.replace("/", "_"), tensor=tensor, dtype=t.dtype.name, shape=shape_of(t.shape))

    return FrozenModel(graph_def=graph_def, inputs=[sig(n) for n in input_names],
                       outputs=[sig(n) for n in output_names], source=source, format="frozen_pb")


def _const_to_placeholder(node) -> None:
    """Turns a Const NodeDef, in place, into a Placeholder of the same dtype and shape."""
    value = tf.make_ndarray(node.attr["value"].tensor)
    dtype = node.attr["dtype"].type
    node.op = "Placeholder"
    node.attr.clear()
    node.attr["dtype"].type = dtype
    node.attr["shape"].shape.CopyFrom(tf.TensorShape(value.shape).as_proto())


def _fill_default_attrs(graph_def, source: str) -> None:
    """Sets every attribute a node leaves out to its op's registered default."""
    from tensorflow.python.framework import op_def_registry  # pylint: disable=import-outside-toplevel
    for node in graph_def.node:
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            raise TfcError(f"graph {source}: node {node.name} has op {node.op!r}, which this TensorFlow does not "
                           "know")
        for attr in op_def.attr:
            if attr.name not in node.attr and attr.HasField("default_value"):
                node.attr[attr.name].CopyFrom(attr.default_value)
