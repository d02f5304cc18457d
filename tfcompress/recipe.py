"""Compression recipes: a YAML list of commands run one after another, and the manifest of what they made.

Schema:

    steps:                       # run in order; each step reads the previous step's output
      - prune: {method: magnitude, sparsity: 0.9, epochs: 30}
      - cluster: {clusters: 16}
      - convert: {quantize: int8, per_tensor: true}
      - pack: {}

Each step is a one-key mapping from a command to its options: the job
function's keyword arguments and options fields (`api.compress.known_options`
lists them; the command line's names, without dashes, where they differ;
`true`/`false` for booleans).  The input and output are set by the recipe
runner and may not be given.
A `.keras` model flows through the Keras commands, `convert` turns it into a
`.tflite`, and `pack` turns that into a `.tfc`; a step that cannot take what
the previous step produced is out of order.

References: Han, Mao & Dally, "Deep Compression", arXiv:1510.00149 (the
prune -> share -> code pipeline a recipe reproduces).
"""

import dataclasses
import hashlib
import os
from typing import Dict, List, Optional, Tuple

from tfcompress.errors import TfcError

KERAS, TFLITE, TFC = ".keras", ".tflite", ".tfc"

# Command -> (what it reads, what it writes).  Order of the kinds: .keras -> .tflite -> .tfc.
STEP_KINDS: Dict[str, Tuple[str, str]] = {
    "prune": (KERAS, KERAS),
    "lowrank": (KERAS, KERAS),
    "drop_blocks": (KERAS, KERAS),
    "cluster": (KERAS, KERAS),
    "pq": (KERAS, KERAS),
    "distill": (KERAS, KERAS),
    "binarize": (KERAS, KERAS),
    "qat": (KERAS, KERAS),
    "convert": (KERAS, TFLITE),
    "pack": (TFLITE, TFC),
}

# Flags the runner sets itself, per command.
RESERVED = {"input", "output", "student", "overwrite", "progress"}


@dataclasses.dataclass(frozen=True)
class Step:
    """One recipe step: the command, its flags (name -> value as in the YAML) and its output kind."""
    index: int
    command: str
    flags: Dict[str, object]
    reads: str
    writes: str

    @property
    def output_name(self) -> str:
        return f"{self.index:02d}_{self.command}{self.writes}"


def kind_of(path: str) -> str:
    """The recipe kind of a model file (.keras and .h5 are both Keras models)."""
    lower = path.lower()
    if lower.endswith((".keras", ".h5")):
        return KERAS
    if lower.endswith(".tflite"):
        return TFLITE
    if lower.endswith(".tfc"):
        return TFC
    raise TfcError(f"a recipe starts from a .keras, .h5 or .tflite model, not {path}")


def parse_recipe(text: str, source: str, input_kind: str = KERAS) -> List[Step]:
    """The steps of a recipe, checked: known commands, flag syntax and order.

    Raises:
      TfcError: invalid YAML, not a `steps:` list, a step that is not a one-key
        mapping, an unknown command, reserved or malformed flags, or a step
        that cannot read what the step before it writes.
    """
    import yaml  # pylint: disable=import-outside-toplevel
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TfcError(f"{source} is not valid YAML ({type(e).__name__})") from e
    if not isinstance(doc, dict) or set(doc) != {"steps"} or not isinstance(doc["steps"], list) or not doc["steps"]:
        raise TfcError(f"{source}: a recipe is a mapping with one key, `steps`, holding a non-empty list")
    steps, kind, previous = [], input_kind, "the input"
    for i, entry in enumerate(doc["steps"], start=1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise TfcError(f"{source}: step {i} must be a one-key mapping from a command to its flags")
        (command, flags), = entry.items()
        if command not in STEP_KINDS:
            raise TfcError(f"{source}: step {i}: unknown command {command!r} (recipe commands: "
                           f"{', '.join(sorted(STEP_KINDS))})")
        flags = {} if flags is None else flags
        if not isinstance(flags, dict) or not all(isinstance(k, str) for k in flags):
            raise TfcError(f"{source}: step {i} ({command}): flags must be a mapping of names to values")
        bad = sorted(RESERVED & set(flags))
        if bad:
            raise TfcError(f"{source}: step {i} ({command}): --{bad[0]} is set by the recipe runner")
        for name, value in flags.items():
            if isinstance(value, (dict, type(None))):
                raise TfcError(f"{source}: step {i} ({command}): flag {name} needs a value")
        reads, writes = STEP_KINDS[command]
        if reads != kind:
            raise TfcError(f"{source}: step {i} ({command}) is out of order: it reads a {reads} model but "
                           f"{previous} is a {kind}")
        steps.append(Step(i, command, dict(flags), reads, writes))
        kind, previous = writes, f"step {i} ({command})"
    return steps


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_fingerprint(folder: Optional[str]) -> Optional[Dict[str, object]]:
    """{path, files, sha256} of a folder: every file's relative path and content, in sorted order."""
    if not folder:
        return None
    h = hashlib.sha256()
    count = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, folder).encode() + b"\0")
            h.update(bytes.fromhex(file_sha256(full)))
            count += 1
    return {"path": folder, "files": count, "sha256": h.hexdigest()}


def versions() -> Dict[str, str]:
    """Versions of Python, tfcompress and the libraries whose numbers reach the artifacts."""
    import importlib.metadata as md  # pylint: disable=import-outside-toplevel
    import platform  # pylint: disable=import-outside-toplevel
    out = {"python": platform.python_version()}
    for dist in ("tfcompress", "tensorflow-cpu", "keras", "numpy", "ai-edge-litert", "flatbuffers", "pyyaml"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out
