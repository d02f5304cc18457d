"""Writing a FrozenModel as a SavedModel or a frozen GraphDef, atomically.

The SavedModel is built in graph mode (one MetaGraph, tag "serve", signature
"serving_default" with the input model's keys and float dtypes).  Graph-mode
building names nothing after process-global counters, so the same graph gives
the same bytes in any process, whatever ran before.
"""

import os

import tensorflow as tf

from tfcompress.errors import TfcError
from tfcompress.io.atomic import atomic_dir, write_bytes
from tfcompress.io.frozen import FrozenModel

OUTPUT_FORMATS = ("saved_model", "frozen_pb")


def write_frozen_pb(model: FrozenModel, path: str, *, overwrite: bool = False) -> None:
    write_bytes(path, model.graph_def.SerializeToString(deterministic=True), overwrite=overwrite)


def write_saved_model(model: FrozenModel, path: str, signature: str = "serving_default", *,
                      overwrite: bool = False) -> None:
    v1 = tf.compat.v1
    with atomic_dir(path, overwrite=overwrite) as staging:
        export_dir = os.path.join(staging, "model")
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(model.graph_def, name="")
            inputs = {s.key: v1.saved_model.utils.build_tensor_info(graph.get_tensor_by_name(s.tensor))
                      for s in model.inputs}
            outputs = {s.key: v1.saved_model.utils.build_tensor_info(graph.get_tensor_by_name(s.tensor))
                       for s in model.outputs}
            sig = v1.saved_model.signature_def_utils.build_signature_def(
                inputs=inputs, outputs=outputs, method_name=tf.saved_model.PREDICT_METHOD_NAME)
            with v1.Session(graph=graph) as sess:
                builder = v1.saved_model.Builder(export_dir)
                builder.add_meta_graph_and_variables(sess, [tf.saved_model.SERVING],
                                                     signature_def_map={signature: sig},
                                                     strip_default_attrs=True)
                builder.save()
        for name in os.listdir(export_dir):
            os.replace(os.path.join(export_dir, name), os.path.join(staging, name))
        os.rmdir(export_dir)


def write_model(model: FrozenModel, path: str, output_format: str = "saved_model", *,
                overwrite: bool = False) -> None:
    """Writes `model` to `path` atomically; an existing output is replaced only with `overwrite`.

    Raises:
      TfcError: `output_format` is neither saved_model nor frozen_pb.
    """
    if output_format not in ("saved_model", "frozen_pb"):
        raise TfcError(f"output format {output_format!r}: give saved_model or frozen_pb")
    if output_format == "frozen_pb":
        write_frozen_pb(model, path, overwrite=overwrite)
    else:
        write_saved_model(model, path, overwrite=overwrite)
