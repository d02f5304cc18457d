"""Running a GraphDef on numpy batches (TF1 Session, so node names are stable)."""

from typing import Dict, Iterable, List, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from tfcompress.errors import TfcError


def imported_graph(graph_def) -> tf.Graph:
    """A tf.Graph holding `graph_def` under its own node names; TfcError if it does not import."""
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.graph_util.import_graph_def(graph_def, name="")
        except Exception as e:
            raise TfcError(f"graph does not import: {str(e).splitlines()[0]}") from e
    return graph


class SessionOwner:
    """Closes `self.session` on close() and at the end of a `with` block."""
    session: tf.compat.v1.Session

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GraphRunner(SessionOwner):
    """Imports a GraphDef once and runs it many times.

    Args:
      graph_def: the graph.
      fetches: tensor names to fetch ("node:0").
      feeds: input tensor names, in the order batches are passed.
      threads: intra-op threads (0: TF's default, all cores).
      inner_fetches: some fetches (now or later, by `session.run`) are tensors inside the graph, not its
        outputs.  Grappler's remapper is then off: with TF's oneDNN ops on it fuses x * sigmoid(x) into one
        swish op, and conv + bias + add into one conv, even when an inner tensor is fetched, and the run
        fails with "... was not found in the Graph" (TF 2.21).
    """

    def __init__(self, graph_def, feeds: Sequence[str], fetches: Sequence[str], threads: int = 0,
                 inner_fetches: bool = False):
        self.graph = imported_graph(graph_def)
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1, intra_op_parallelism_threads=threads)
        if inner_fetches:
            config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        self.feeds = [self.graph.get_tensor_by_name(t) for t in feeds]
        self.fetches = [self.graph.get_tensor_by_name(t) for t in fetches]

    def run(self, *inputs: np.ndarray) -> List[np.ndarray]:
        return self.session.run(self.fetches, dict(zip(self.feeds, inputs)))


def run_model(model, images: np.ndarray) -> np.ndarray:
    """A FrozenModel's first output on a float NHWC batch, as [N, K]."""
    with GraphRunner(model.graph_def, [model.image_input().tensor], [model.outputs[0].tensor]) as runner:
        return runner.run(images)[0].reshape(len(images), -1)


def run_graph(graph_def, feeds: Dict[str, np.ndarray], fetches: Iterable[str]) -> List[np.ndarray]:
    """One-shot convenience: run `graph_def` with `feeds`, return `fetches`."""
    fetches = list(fetches)
    with GraphRunner(graph_def, list(feeds), fetches, inner_fetches=True) as runner:
        return runner.run(*feeds.values())
