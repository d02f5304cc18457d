"""THE ordered list of float-graph rewrites.  Order matters and is decided here only.

1. strip_identity: drop Identity/NoOp and stale control edges, exposing Consts.
2. fold_constants: evaluate constant subgraphs (Keras 3 BN becomes Mul/Add by Consts).
3. fold_batch_norm: fold BN (fused or decomposed) into conv/matmul weights + BiasAdd.
4. fold_bias_add: per-channel Adds become BiasAdd; BiasAdd chains merge.
5. recognise_activations: Maximum/Minimum/Clip spellings become Relu/Relu6/LeakyRelu.
6. static_shapes: shape computations on known shapes (Keras Flatten) become Consts.
7. fold_constants again: nothing a later pass made should stay computable.
"""

import dataclasses
from typing import Callable, List, Tuple

from tfcompress.graph.graph import Graph
from tfcompress.graph.rewriters import (fold_batch_norm, fold_bias_add, fold_constants, recognise_activations,
                                        static_shapes, strip_identity)
from tfcompress.io.frozen import FrozenModel

PASSES: Tuple[Tuple[str, Callable[[Graph], int]], ...] = (
    ("strip_identity", strip_identity.run),
    ("fold_constants", fold_constants.run),
    ("fold_batch_norm", fold_batch_norm.run),
    ("fold_bias_add", fold_bias_add.run),
    ("recognise_activations", recognise_activations.run),
    ("static_shapes", static_shapes.run),
    ("fold_constants", fold_constants.run),
)


@dataclasses.dataclass
class PassResult:
    name: str
    rewrites: int


def optimize(model: FrozenModel, passes=PASSES) -> Tuple[FrozenModel, List[PassResult]]:
    """Runs the passes in order; returns the rewritten model and what each did."""
    graph = Graph(model.graph_def, outputs=[s.tensor for s in model.outputs])
    results = []
    for name, fn in passes:
        results.append(PassResult(name, fn(graph)))
    return model.replace_graph(graph.to_graph_def()), results
