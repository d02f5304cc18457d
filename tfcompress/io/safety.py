"""Refusing graphs that touch files or run arbitrary code.

A frozen inference graph has no reason to read or write files, spawn Python
or load plugins.  Such ops are refused unless the user opts in.  A SavedModel
is a program (TF's own security model says so): its initializers run while it
loads, so `check_saved_model` reads `saved_model.pb` as a proto and checks
every graph and function in it before TensorFlow loads anything.
"""

import os

from tfcompress.errors import TfcError

# Ops that read or write the filesystem, execute Python, or load code.
UNSAFE_OPS = frozenset({
    # Python execution.
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    # File I/O.
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "ShardedFilename", "ShardedFilespec",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2",
    "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "TFRecordReader", "TFRecordReaderV2",
    "LMDBReader", "IdentityReader", "IdentityReaderV2", "ReaderReadV2", "ReaderRead",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "SaveDataset", "SaveDatasetV2",
    "LoadDataset", "SnapshotDataset", "SnapshotDatasetV2", "LMDBDataset", "ExperimentalLMDBDataset",
    "DecodeCSV", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary", "WriteImageSummary",
    "WriteHistogramSummary", "WriteAudioSummary", "WriteGraphSummary", "WriteRawProtoSummary",
    "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter", "CreateSummaryDbWriter",
    "PrintV2", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3",
    # Code loading / remote execution.
    "LoadLibrary", "RemoteCall", "RemoteFusedGraphExecute", "_Send", "_Recv", "_HostSend", "_HostRecv",
    # Datasets executed by graph optimizations (constant folding), and caches that write files.
    "CacheDataset", "CacheDatasetV2", "ReduceDataset",
})

# Families refused by name: debug ops (DebugNanCount with debug_urls=file://... writes files) and every
# dataset op, neither of which belongs in an inference graph.
UNSAFE_PREFIXES = ("Debug",)
UNSAFE_SUFFIXES = ("Dataset", "DatasetV2", "DatasetV3")


def is_unsafe(op: str) -> bool:
    return op in UNSAFE_OPS or op.startswith(UNSAFE_PREFIXES) or op.endswith(UNSAFE_SUFFIXES)


# What a SavedModel's own checkpoint functions do: read and write its variables/ folder.  Allowed only inside
# the functions (TF2) or the name scope (TF1) that the meta graph's saver_def names, and nowhere else.
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec",
                            "Save", "Restore", "SaveSlices", "RestoreSlice"})


def find_unsafe_ops(graph_def, checkpoint_functions=frozenset(), checkpoint_scope: str = "") -> list:
    """Returns sorted "op (node)" strings for unsafe ops in the graph or its function library.

    Args:
      graph_def: the graph, with its function library.
      checkpoint_functions: functions whose checkpoint ops (CHECKPOINT_OPS) are allowed.
      checkpoint_scope: a node-name prefix under which checkpoint ops are allowed ("" for none).
    """
    found = []
    for node in graph_def.node:
        in_saver = bool(checkpoint_scope) and node.name.startswith(checkpoint_scope)
        if is_unsafe(node.op) and not (in_saver and node.op in CHECKPOINT_OPS):
            found.append(f"{node.op} ({node.name})")
    for fn in graph_def.library.function:
        allowed = fn.signature.name in checkpoint_functions
        for node in fn.node_def:
            if is_unsafe(node.op) and not (allowed and node.op in CHECKPOINT_OPS):
                found.append(f"{node.op} ({fn.signature.name}/{node.name})")
    return sorted(found)


def check_safe(graph_def, source: str, allow_unsafe_ops: bool, checkpoint_functions=frozenset(),
               checkpoint_scope: str = "") -> None:
    """Raises TfcError if the graph has file or exec ops and the user did not opt in."""
    if allow_unsafe_ops:
        return
    found = find_unsafe_ops(graph_def, checkpoint_functions, checkpoint_scope)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise TfcError(f"{source} contains file or exec ops: {shown}; "
                       "pass --allow_unsafe_ops if you trust this model")


def check_saved_model(path: str, allow_unsafe_ops: bool) -> None:
    """Reads a SavedModel's graphs and functions as protos and refuses unsafe ops before anything runs.

    Every meta graph is checked: its graph, its function library (where
    initializers, restore functions and signatures live).

    Raises:
      TfcError: an unreadable saved_model.pb, or unsafe ops without `allow_unsafe_ops`.
    """
    if allow_unsafe_ops:
        return
    from google.protobuf import message, text_format  # pylint: disable=import-outside-toplevel
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
    proto = saved_model_pb2.SavedModel()
    binary = os.path.join(path, "saved_model.pb")
    try:
        if os.path.exists(binary):
            with open(binary, "rb") as f:
                proto.ParseFromString(f.read())
        else:
            with open(os.path.join(path, "saved_model.pbtxt"), encoding="utf-8") as f:
                text_format.Parse(f.read(), proto)
    except (OSError, UnicodeDecodeError, message.DecodeError, text_format.ParseError) as e:
        raise TfcError(f"cannot load SavedModel {path}: saved_model.pb is corrupt or unreadable "
                       f"({type(e).__name__})") from e
    for meta_graph in proto.meta_graphs:
        saver = meta_graph.saver_def
        named = {saver.restore_op_name, saver.save_tensor_name.split(":")[0]} - {""}
        functions = {node.attr["f"].func.name for node in meta_graph.graph_def.node
                     if node.name in named and "f" in node.attr}
        scope = saver.restore_op_name.rsplit("/", 1)[0] + "/" if "/" in saver.restore_op_name else ""
        check_safe(meta_graph.graph_def, path, allow_unsafe_ops, frozenset(functions), scope)
