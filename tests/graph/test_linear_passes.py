"""Graph passes are linear in graph size: pattern-match calls counted, not timed.

The same inverted-residual block stacked 1, 4 and 16 times (`zoo.stacked_blocks`)
goes through the whole pass list.  A driver that restarted its walk after every
rewrite would make O(rewrites x nodes) match calls, growing with the square of
the copies; the worklist driver tries each node once plus a few neighbours per
rewrite.  `tools/benchmark_scale.py --passes` prints the times.
"""

import sys

import pytest

from tfcompress.evaluate.zoo import stacked_blocks
from tfcompress.graph.passes import optimize
from tfcompress.graph.rewriters import base
from tfcompress.io.loaders import freeze_keras_model

COPIES = (1, 4, 16)
# Pattern-match calls per node of the frozen graph, over all passes (measured 4.4, 3.8, 3.6 at 1, 4 and 16
# copies; the earlier driver, which restarted its walk after each rewrite, made 4.4, 4.6 and 7.9).
MAX_CALLS_PER_NODE = 5.0
# Calls per node must not grow with the copies (they fall: the head is a smaller share of a bigger graph).
MAX_PER_NODE_GROWTH = 1.05


def test_pattern_match_calls_grow_linearly_with_graph_size():
    per_node, rewrites = {}, {}
    for copies in COPIES:
        frozen = freeze_keras_model(stacked_blocks(copies))
        base.MATCH_CALLS["count"] = 0
        _, results = optimize(frozen)
        per_node[copies] = base.MATCH_CALLS["count"] / len(frozen.graph_def.node)
        rewrites[copies] = sum(r.rewrites for r in results)
    # The graph really grows, and every copy is rewritten (else the count would prove nothing).
    assert rewrites[16] >= 16 * (rewrites[4] - rewrites[1]) / 3 * 0.9, rewrites
    assert all(v <= MAX_CALLS_PER_NODE for v in per_node.values()), per_node
    assert all(per_node[b] <= per_node[a] * MAX_PER_NODE_GROWTH for a, b in zip(COPIES, COPIES[1:])), per_node


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
