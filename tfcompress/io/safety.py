"""Refusing graphs that touch files or run arbitrary code.

A frozen inference graph has no reason to read or write files, spawn Python
or load plugins.  Such ops are refused unless the user opts in.
"""

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
})


def find_unsafe_ops(graph_def) -> list:
    """Returns sorted "op (node)" strings for unsafe ops in the graph or its function library."""
    found = []
    for node in graph_def.node:
        if node.op in UNSAFE_OPS:
            found.append(f"{node.op} ({node.name})")
    for fn in graph_def.library.function:
        for node in fn.node_def:
            if node.op in UNSAFE_OPS:
                found.append(f"{node.op} ({fn.signature.name}/{node.name})")
    return sorted(found)


def check_safe(graph_def, source: str, allow_unsafe_ops: bool) -> None:
    """Raises TfcError if the graph has file or exec ops and the user did not opt in."""
    if allow_unsafe_ops:
        return
    found = find_unsafe_ops(graph_def)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise TfcError(f"{source} contains file or exec ops: {shown}; "
                       "pass --allow_unsafe_ops if you trust this model")
