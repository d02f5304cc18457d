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
    return "usage: tfcompress {%s} [--flags]  (tfcompress CMD --helpfull for flags)" % (
        "|".join(sorted(COMMANDS)))


def run() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    command = sys.argv[1]
    if command not in COMMANDS:
        print(f"tfcompress: unknown command {command!r}; {_usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"{__package__}.{COMMANDS[command]}")
    sys.argv = [f"tfcompress {command}"] + sys.argv[2:]
    module.run()
