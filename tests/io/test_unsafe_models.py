"""Nothing a model holds runs before the safety check: a SavedModel whose initializer writes a file, debug ops
that write, dataset ops that graph optimizations execute."""

import os
import sys

import pytest

from tests.conftest import HELDOUT, run_tool_in_process
from tfcompress.errors import TfcError


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """(a SavedModel whose load-time initializer writes `marker`, the marker path); TF itself writes it on load."""
    import tensorflow as tf
    root = tmp_path_factory.mktemp("evil")
    marker = str(root / "written_at_load.txt")

    class Resource(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="evil")

        def _initialize(self):
            tf.io.write_file(marker, "written at load")
            tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.resource = Resource()

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, x):
            return {"y": tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]))}

    model = Model()
    path = str(root / "savedmodel")
    tf.saved_model.save(model, path, signatures={"serving_default": model.serve})
    tf.saved_model.load(path)  # The danger is real: TensorFlow's own loader runs the initializer.
    assert os.path.exists(marker)
    os.remove(marker)
    return path, marker


def test_the_loader_refuses_before_loading(evil):
    from tfcompress.io.loaders import load_model
    path, marker = evil
    with pytest.raises(TfcError, match=r"outside the allowlist of pure ops .*: WriteFile \(__inference__initializer"):
        load_model(path)
    assert not os.path.exists(marker)


# Every command that loads a TF graph, with the flag that names the model.
GRAPH_COMMANDS = [
    ("quantize_graph", "--input", ["--output={tmp}/q8", "--mode=weights"]),
    ("convert", "--input", ["--output={tmp}/m.tflite", "--quantize=none"]),
    ("calibrate", "--input", ["--calibration_cache={tmp}/c.json"]),
    ("eval", "--model", ["--images=" + HELDOUT]),
    ("parity", "--reference", ["--images=" + HELDOUT]),
    ("export_onnx", "--input", ["--output={tmp}/m.onnx", "--images=" + HELDOUT]),
]


def _refused_leaving_nothing(tool, flag, args, model, op, written, tmp_path):
    """`tool` on `model` exits 1 with one error line naming `op`; `written` and every output stay absent."""
    proc = run_tool_in_process(tool, f"{flag}={model}", *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and op in errors[0], proc.stderr[-2000:]
    assert not os.path.exists(written) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("tool, flag, args", GRAPH_COMMANDS)
def test_no_command_runs_the_initializer(evil, tool, flag, args, tmp_path):
    path, marker = evil
    _refused_leaving_nothing(tool, flag, args, path, "WriteFile", marker, tmp_path)


@pytest.fixture(scope="module")
def debug_graph(tmp_path_factory):
    """(a frozen .pb whose DebugNanCount writes under `debug_dir` when run, debug_dir); TF really writes it."""
    import numpy as np
    import tensorflow as tf
    root = tmp_path_factory.mktemp("debug")
    debug_dir = str(root / "written_by_the_graph")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 32, 32, 1), name="x")
        count = tf.raw_ops.DebugNanCount(input=x, tensor_name="x:0", debug_urls=["file://" + debug_dir])
        y = tf.identity(x * 2.0 + tf.cast(count, tf.float32), name="y")
    with tf.compat.v1.Session(graph=graph) as session:
        session.run(y, {x: np.zeros((1, 32, 32, 1), np.float32)})
    assert os.path.isdir(debug_dir)  # The danger is real.
    import shutil
    shutil.rmtree(debug_dir)
    path = root / "debug.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return str(path), debug_dir


@pytest.mark.parametrize("tool, flag, args", GRAPH_COMMANDS)
def test_no_command_runs_a_debug_op(debug_graph, tool, flag, args, tmp_path):
    path, debug_dir = debug_graph
    _refused_leaving_nothing(tool, flag, args, path, "DebugNanCount", debug_dir, tmp_path)


def _graph_with(make):
    import tensorflow as tf
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="x")
        make(x)
    return graph.as_graph_def()


@pytest.mark.parametrize("op", ["DebugNanCount", "CacheDatasetV2", "ReduceDataset", "TensorSliceDataset",
                                "ImmutableConst", "PrintV2", "WriteSummary", "LoadAndRemapMatrix", "RemoteCall",
                                "InitializeTableFromTextFileV2", "Abort", "MyCustomKernel"])
def test_ops_outside_the_allowlist_are_refused(op, tmp_path):
    """Ops that reach outside the process (some during graph optimization), and ops TF does not define, are
    refused before anything runs."""
    import tensorflow as tf
    from tfcompress.io.loaders import load_model
    graph_def = _graph_with(lambda x: tf.identity(x, name="y"))
    node = graph_def.node.add()
    node.name, node.op = "bad", op
    path = tmp_path / "bad.pb"
    path.write_bytes(graph_def.SerializeToString())
    with pytest.raises(TfcError, match=f"outside the allowlist of pure ops .*: {op} \\(bad\\)"):
        load_model(str(path), input_names=["x"], output_names=["y"])
    assert os.listdir(tmp_path) == ["bad.pb"]


def test_the_allowlist_names_real_ops_and_none_that_reach_outside():
    """Every allowed op is one TensorFlow registers; no file, exec, debug, dataset or summary op is allowed."""
    from tensorflow.python.framework import op_def_registry
    from tfcompress.io.pure_ops import PURE_OPS
    assert {"Conv2D", "DepthwiseConv2dNative", "FusedBatchNormV3", "QuantizedConv2D", "QuantizeV2", "VarHandleOp",
            "StatefulPartitionedCall", "While", "Assert"} <= PURE_OPS
    assert [op for op in sorted(PURE_OPS) if op_def_registry.get(op) is None] == []
    outside = {"ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "EagerPyFunc", "PyFuncStateless", "SaveV2",
               "RestoreV2", "ImmutableConst", "LoadLibrary", "PrintV2", "WriteSummary", "DebugNanCount",
               "RemoteCall", "InitializeTableFromTextFile", "LoadAndRemapMatrix", "TFRecordReaderV2"}
    assert sorted(outside & PURE_OPS) == []
    assert [op for op in PURE_OPS if "Dataset" in op or op.startswith("Debug") or "Summary" in op] == []


def test_checkpoint_ops_are_allowed_only_in_the_savers_own_functions():
    """A SavedModel's save/restore functions may write its variables; the same op elsewhere is refused."""
    from tensorflow.core.framework import graph_pb2
    from tfcompress.io import safety
    graph_def = graph_pb2.GraphDef()
    for fn_name in ("__inference__traced_save_1", "__inference_other_2"):
        fn = graph_def.library.function.add()
        fn.signature.name = fn_name
        node = fn.node_def.add()
        node.name, node.op = "SaveV2", "SaveV2"
    found = safety.find_unsafe_ops(graph_def, checkpoint_functions={"__inference__traced_save_1"})
    assert found == ["SaveV2 (__inference_other_2/SaveV2)"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
