"""A Keras model's outputs as heads: class vectors, and everything else (regression vectors, dense maps).

Training, reports and checks ask which outputs are class heads: they are
distilled by KL divergence on softened probabilities, agree by top-1 and
take labels.  Every other output is distilled by mean squared error against
the teacher's and compared by absolute error.

A single rank-2 output is a class head, as it always was here (logits or
probabilities).  In a model with several outputs, a rank-2 output is a class
head when a softmax makes it (a Softmax layer or a softmax activation); a
4-value box regression beside a class head is not one.
"""

import dataclasses
from typing import List, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Head:
    """One model output.

    Attributes:
      index: position in `model.outputs`.
      name: the output's name (its layer's).
      shape: dimensions after the batch.
      kind: "class" or "values".
      probabilities: a softmax makes it (False for logits and for values).
    """
    index: int
    name: str
    shape: tuple
    kind: str
    probabilities: bool

    @property
    def width(self) -> int:
        return int(self.shape[-1])


def unwrapped(layer):
    """The layer inside any pruning, QAT or binary wrappers around it."""
    while getattr(layer, "layer", None) is not None:
        layer = layer.layer
    return layer


def _producer(tensor):
    return unwrapped(tensor._keras_history[0])  # pylint: disable=protected-access  # (layer, node, index)


def is_softmax(layer) -> bool:
    """A Softmax layer, or one with a softmax activation."""
    # By name, so tf_keras layers (the tfmot path) are recognized as well as Keras 3 ones.
    return type(layer).__name__ == "Softmax" or getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def heads(model) -> List[Head]:
    """Every output of `model` as a Head, in output order."""
    outputs = list(model.outputs)
    found = []
    for i, tensor in enumerate(outputs):
        layer = _producer(tensor)
        shape = tuple(int(d) if d is not None else None for d in tensor.shape[1:])
        probabilities = is_softmax(layer)
        is_class = len(shape) == 1 and (len(outputs) == 1 or probabilities)
        found.append(Head(index=i, name=layer.name, shape=shape, kind="class" if is_class else "values",
                          probabilities=probabilities and is_class))
    return found


def class_head(model) -> Optional[Head]:
    """The first class head, or None (labels, top-1 agreement and accuracy refer to it)."""
    return next((h for h in heads(model) if h.kind == "class"), None)


def predict_all(model, x: np.ndarray, batch_size: int = 64) -> List[np.ndarray]:
    """Every output of `model` on x, as a list in output order (one element for a single-output model)."""
    return as_list(model, model.predict(x, batch_size=batch_size, verbose=0))


def as_list(model, out) -> list:
    """A model's outputs (one array, a list, or a dict by output name) as a list in output order."""
    if isinstance(out, dict):
        out = [out[name] for name in model.output_names]
    return list(out) if isinstance(out, (list, tuple)) else [out]
