"""The `tfcompress` console script: dispatches `tfcompress CMD --flags` to tools/CMD.py."""

import importlib
import sys

# Subcommand -> module in tools/.  Each module defines its own absl flags and a
# `main(argv)`; only the chosen one is imported, so flag names never collide.
COMMANDS = {
    "quantize_graph": "quantize_graph",
    "calibrate": "calibrate",
    "convert": "convert",
    "eval": "eval",
    "export_onnx": "export_onnx",
    "parity": "parity",
    "report": "report",
    "prune": "prune",
    "lowrank": "lowrank",
    "sensitivity": "sensitivity",
    "drop_blocks": "drop_blocks",
    "cluster": "cluster",
    "pack": "pack",
    "unpack": "unpack",
    "compress": "compress",
    "distill": "distill",
    "binarize": "binarize",
    "qat": "qat",
    "pq": "pq",
}


def _usage() -> str:
    return "usage: tfcompress {%s} [--flags]  (tfcompress CMD --help for a command's flags)" % (
        "|".join(sorted(COMMANDS)))


def _summary(command: str) -> str:
    """The first line of a command module's docstring, read without importing it (its flags stay undefined)."""
    import ast  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), COMMANDS[command] + ".py")
    with open(path, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    first = doc.splitlines()[0] if doc else ""
    return first.split(": ", 1)[1] if first.startswith(command + ":") else first


def _commands() -> str:
    width = max(len(c) for c in COMMANDS)
    return "\n".join([_usage(), "", "commands:"] + [f"  {c.ljust(width)}  {_summary(c)}" for c in sorted(COMMANDS)])


def run() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(_commands())
        sys.exit(0)
    command = sys.argv[1]
    if command not in COMMANDS:
        print(f"tfcompress: unknown command {command!r}; {_usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"{__package__}.{COMMANDS[command]}")
    sys.argv = [f"tfcompress {command}"] + sys.argv[2:]
    module.run()
