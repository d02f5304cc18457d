"""One rewrite per module.  Each exposes `run(graph) -> int` (rewrites applied).

The order they run in is decided only by `tfcompress/graph/passes.py`.
"""
