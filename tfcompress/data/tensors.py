"""Calibration data that is not images: one array per model input, first axis = samples.

    np.savez("data.npz", input_0=a, input_1=b)
    tfcompress quantize_graph --input=graph.pb --calibration_data=data.npz

This is how graphs that do not take one NHWC image are calibrated: several
inputs, any rank, any channel count, integer inputs.  `TensorData` holds the
arrays (from a `.npz`, a dict of arrays, or a `tf.data.Dataset` of dicts);
`bind(model)` checks them against the model's inputs and gives `BoundData`,
which yields feed batches and a digest for the calibration cache.

An array for an input of static shape S holds its samples along a new first
axis: (N,) + S, each sample fed on its own.  When S starts with an unknown
batch dimension the array may instead be (N,) + S[1:]: the samples are then
fed together, `batch_size` at a time.  An array is matched to an input by the
input's signature key, node name or tensor name.
"""

import dataclasses
import hashlib
import os
import zipfile
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from tfcompress.errors import TfcError


class TensorData:
    """Named arrays, first axis = samples, not yet checked against a model.

    Attributes:
      arrays: name -> array.
      description: how the data is named in messages ("data.npz").
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], description: str = "calibration data"):
        self.arrays = dict(arrays)
        self.description = description
        if not self.arrays:
            raise TfcError(f"{description} holds no arrays")

    @classmethod
    def from_npz(cls, path: str) -> "TensorData":
        """Reads a `.npz` (numpy's zip of arrays); pickled object arrays are refused.

        Raises:
          TfcError: a missing, empty or corrupt file, or an object array.
        """
        if not os.path.isfile(path):
            raise TfcError(f"calibration data {path} does not exist")
        if os.path.getsize(path) == 0:
            raise TfcError(f"calibration data {path} is empty")
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic.startswith(b"\x93NUMPY"):
            raise TfcError(f"calibration data {path} is a single .npy array, not a .npz of named arrays")
        if not magic.startswith(b"PK"):
            raise TfcError(f"calibration data {path} is not a .npz (numpy's zip of named arrays)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise TfcError(f"calibration data {path} holds pickled objects; only numeric arrays are read") \
                    from e
            raise TfcError(f"calibration data {path} is corrupt or not a .npz ({str(e).splitlines()[0]})") from e
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise TfcError(f"calibration data {path} is corrupt or not a .npz ({type(e).__name__})") from e
        return cls(arrays, description=path)

    @classmethod
    def from_dataset(cls, dataset) -> "TensorData":
        """A tf.data.Dataset whose elements are dicts name -> batch (first axis = samples)."""
        parts: Dict[str, List[np.ndarray]] = {}
        for element in dataset.as_numpy_iterator():
            if not isinstance(element, dict):
                raise TfcError("a calibration dataset must yield dicts of input name -> batch")
            if parts and set(element) != set(parts):
                raise TfcError("every element of the calibration dataset must name the same inputs")
            for name, value in element.items():
                parts.setdefault(name, []).append(np.asarray(value))
        try:
            return cls({name: np.concatenate(values) for name, values in parts.items()},
                       description="calibration dataset")
        except ValueError as e:
            raise TfcError(f"calibration dataset: batches of one input differ in shape ({e})") from e

    def bind(self, model) -> "BoundData":
        """Checks the arrays against `model.inputs` (a FrozenModel) and orders them as its inputs.

        Raises:
          TfcError: a missing or unknown input name, a wrong shape or dtype, NaN/Inf, no samples, or
            inputs with different sample counts.
        """
        by_name = {}
        for sig in model.inputs:
            for alias in {sig.key, sig.node, sig.tensor}:
                by_name[alias] = sig
        unknown = sorted(name for name in self.arrays if name not in by_name)
        if unknown:
            raise TfcError(f"{self.description} has an array {unknown[0]!r} that names no input of the model "
                           f"(its inputs: {', '.join(s.node for s in model.inputs)})")
        given = {}
        for name, value in self.arrays.items():
            sig = by_name[name]
            if sig.tensor in given:
                raise TfcError(f"{self.description} has two arrays for input {sig.node}")
            given[sig.tensor] = value
        arrays, batched, count = [], [], None
        for sig in model.inputs:
            if sig.tensor not in given:
                raise TfcError(f"{self.description} has no array for input {sig.node} (it has: "
                               f"{', '.join(sorted(self.arrays))})")
            array = _as_input_dtype(given[sig.tensor], sig, self.description)
            batched.append(_sample_layout(array.shape, sig, self.description))
            if count is not None and len(array) != count:
                raise TfcError(f"{self.description}: input {sig.node} has {len(array)} samples, another "
                               f"input has {count}")
            count = len(array)
            arrays.append(array)
        if not count:
            raise TfcError(f"{self.description} holds no samples (first axis of length 0)")
        return BoundData(tensors=[s.tensor for s in model.inputs], arrays=arrays, batched=batched,
                         description=self.description)


def as_tensor_data(data) -> Optional[TensorData]:
    """A TensorData from a .npz path, a dict of arrays, a tf.data.Dataset of dicts or a TensorData; None stays None."""
    if data is None or isinstance(data, TensorData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return TensorData.from_npz(os.fspath(data))
    if isinstance(data, Mapping):
        return TensorData({str(k): np.asarray(v) for k, v in data.items()}, description="calibration arrays")
    if type(data).__module__.startswith("tensorflow") and hasattr(data, "as_numpy_iterator"):
        return TensorData.from_dataset(data)
    raise TfcError(f"calibration data must be a .npz path, a dict of arrays or a tf.data.Dataset of dicts, "
                   f"not {type(data).__name__}")


@dataclasses.dataclass
class BoundData:
    """Arrays in the model's input order, checked, with their sample layout.

    Attributes:
      tensors: the model's input tensor names.
      arrays: one per input, in the input's dtype.
      batched: per input, True when samples are rows of the input's batch axis, False when each sample is
        one whole feed.
    """
    tensors: List[str]
    arrays: List[np.ndarray]
    batched: List[bool]
    description: str = "calibration data"

    def __len__(self) -> int:
        return len(self.arrays[0])

    def batches(self, batch_size: int = 32) -> Iterator[Tuple[List[np.ndarray], int]]:
        """(one feed per input, samples in it): `batch_size` samples at a time when every input is batched,
        else one sample at a time."""
        if all(self.batched):
            for start in range(0, len(self), batch_size):
                yield [a[start:start + batch_size] for a in self.arrays], min(batch_size, len(self) - start)
            return
        for i in range(len(self)):
            yield [a[i:i + 1] if b else a[i] for a, b in zip(self.arrays, self.batched)], 1

    def shard(self, index: int, count: int) -> "BoundData":
        """Every `count`-th sample from the `index`-th (0-based), as `data.source.shard` takes images.

        Raises:
          TfcError: `index` outside [0, count), or an empty shard.
        """
        if not 0 <= index < count:
            raise TfcError(f"shard {index}/{count}: the index must be in [0, {count})")
        if len(self) <= index:
            raise TfcError(f"shard {index}/{count} of {self.description} ({len(self)} samples) is empty")
        return dataclasses.replace(self, arrays=[a[index::count] for a in self.arrays],
                                   description=f"{self.description} (shard {index}/{count})")

    def fingerprint(self) -> dict:
        """What the calibration cache records in place of image preprocessing: the inputs and a digest."""
        h = hashlib.sha256()
        inputs = {}
        for tensor, array in zip(self.tensors, self.arrays):
            inputs[tensor] = {"dtype": array.dtype.name, "shape": list(array.shape)}
            h.update(repr((tensor, array.dtype.str, array.shape)).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return {"calibration_data": {"inputs": inputs, "sha256": h.hexdigest()}}


def _as_input_dtype(array: np.ndarray, sig, description: str) -> np.ndarray:
    array = np.asarray(array)
    try:
        want = np.dtype(sig.dtype)
    except TypeError:
        want = None  # string, or a TF-only dtype (quint8, bfloat16, ...)
    if want is None or want.kind not in "biuf" or array.dtype.kind not in "biuf":
        raise TfcError(f"{description}: input {sig.node} is {sig.dtype} and the array is {array.dtype}; "
                       "numeric inputs and arrays only")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "Inf"
        raise TfcError(f"{description}: the array for input {sig.node} contains {bad}")
    if want.kind == "f":
        if array.dtype.kind == "b":
            raise TfcError(f"{description}: input {sig.node} is {sig.dtype} and the array is bool")
        return array.astype(want)
    if want.kind == "b":
        if array.dtype.kind != "b":
            raise TfcError(f"{description}: input {sig.node} is bool and the array is {array.dtype}")
        return array
    if array.dtype.kind not in "iu":
        raise TfcError(f"{description}: input {sig.node} is {sig.dtype} and the array is {array.dtype}; give "
                       "integers")
    info = np.iinfo(want)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise TfcError(f"{description}: the array for input {sig.node} has values outside {sig.dtype}")
    return array.astype(want)


def _matches(shape, want) -> bool:
    return len(shape) == len(want) and all(w is None or s == w for s, w in zip(shape, want))


def _sample_layout(shape, sig, description: str) -> bool:
    """True when the samples are rows of the input's batch axis; raises on a shape that fits neither layout."""
    if sig.shape is None:
        if len(shape) < 1:
            raise TfcError(f"{description}: the array for input {sig.node} is a scalar; put samples on a first "
                           "axis")
        return False
    want = tuple(sig.shape)
    if len(shape) == len(want) + 1 and _matches(shape[1:], want):
        return False
    if want and want[0] is None and _matches(shape[1:], want[1:]) and len(shape) == len(want):
        return True
    layouts = f"(samples,) + {_dims(want)}"
    if want and want[0] is None:
        layouts = f"(samples,) + {_dims(want[1:])} or " + layouts
    raise TfcError(f"{description}: the array for input {sig.node} has shape {tuple(shape)}; the input is "
                   f"{_dims(want)}, so the array must be {layouts}")


def _dims(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
