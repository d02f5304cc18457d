"""One abstraction over every image source: a folder, an array of raw pixels, or a tf.data.Dataset.

Calibration, training and evaluation all read images through `ImageSource`:
`batches(prep, n)` yields normalized float32 NHWC batches of at most n images,
in a fixed order, holding one batch in memory at a time.  The same pixels give
the same floats whatever the source, so a model calibrated from a folder and
from an array of that folder's decoded pixels gets byte-identical ranges.

`as_source` turns what a user passes into a source:

- a folder path: images read recursively in sorted order (see `folders` for
  labelled folders, DIR/<label>/*.png);
- a numpy array (N, H, W, C) of raw pixel values (uint8, or any real dtype in
  pixel units), optionally with labels;
- a `tf.data.Dataset` of such batches, or of (pixels, labels) batches.
"""

import copy
import hashlib
import os
from typing import Iterator, List, Optional, Sequence

import numpy as np

from tfcompress.data.folders import read_image_set
from tfcompress.data.images import Preprocessing, iter_batches, resize_pixels
from tfcompress.errors import TfcError


class ImageSource:
    """Images, with labels when known.

    Attributes:
      labels: class index per image (None when unlabelled).
      class_names: names in output order (None when unlabelled).
      description: how the source is named in messages and reports.
    """
    labels: Optional[np.ndarray] = None
    class_names: Optional[List[str]] = None
    description: str = "images"

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, prep: Preprocessing, batch_size: int = 32) -> Iterator[np.ndarray]:
        """Normalized float32 [B, H, W, C] batches, B <= batch_size, in the source's order."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """SHA-256 identifying the images (names and bytes, or the pixel values)."""
        raise NotImplementedError

    def array(self, prep: Preprocessing, batch_size: int = 64) -> np.ndarray:
        """Every image at once, normalized: for training sets, which are small."""
        parts = list(self.batches(prep, batch_size))
        return np.concatenate(parts) if parts else np.zeros((0, prep.height, prep.width, prep.channels), np.float32)


class FolderSource(ImageSource):
    """Image files below a folder; labelled when the folder holds only class subfolders.

    Args:
      folder: the folder.
      labels_file: names in the model's output order (see `folders.read_image_set`).
      require_labels: refuse an unlabelled folder.
      limit: read only the first `limit` images (in sorted order).
    """

    def __init__(self, folder: str, labels_file: Optional[str] = None, require_labels: bool = False,
                 limit: Optional[int] = None):
        images = read_image_set(folder, labels_file, require_labels=require_labels)
        self.folder = folder
        self.paths = images.paths[:limit]
        self.labels = None if images.labels is None else images.labels[:limit]
        self.class_names = images.class_names
        self.description = folder

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> "FolderSource":
        """Unlabelled image files given one by one (named relative to their common folder)."""
        if not paths:
            raise TfcError("no image files given")
        source = cls.__new__(cls)
        source.paths = [os.fspath(p) for p in paths]
        source.folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in source.paths])
        source.description = f"{len(source.paths)} image files"
        return source

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, prep: Preprocessing, batch_size: int = 32) -> Iterator[np.ndarray]:
        return iter_batches(self.paths, prep, batch_size)

    def fingerprint(self) -> str:
        return fingerprint_files(self.paths, self.folder)


def shard(source: ImageSource, index: int, count: int) -> ImageSource:
    """Every `count`-th image of `source` from the `index`-th (0-based): one worker's part of a calibration
    sharded over `count` workers.  The shards of 0..count-1 hold every image once.

    Raises:
      TfcError: `index` outside [0, count), or an empty shard (more workers than images).
    """
    if not 0 <= index < count:
        raise TfcError(f"shard {index}/{count}: the index must be in [0, {count})")
    if len(source) <= index:
        raise TfcError(f"shard {index}/{count} of {source.description} ({len(source)} images) is empty")
    if isinstance(source, DatasetSource):
        source = source._array  # pylint: disable=protected-access
    if isinstance(source, ArraySource):
        return ArraySource(source.pixels[index::count], None if source.labels is None else source.labels[index::count],
                           source.class_names)
    if isinstance(source, FolderSource):
        part = copy.copy(source)
        part.paths = source.paths[index::count]
        part.labels = None if source.labels is None else source.labels[index::count]
        part.description = f"{source.description} (shard {index}/{count})"
        return part
    raise TfcError(f"{type(source).__name__} cannot be sharded")


def fingerprint_files(paths: Sequence[str], root: str) -> str:
    """sha256 over relative names and contents: identifies an image set."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.relpath(p, root).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _check_pixels(pixels, where: str) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 4:
        raise TfcError(f"{where}: images must be an (N, H, W, C) array of pixels, got shape {pixels.shape}")
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise TfcError(f"{where}: pixels must be integers or floats, got dtype {pixels.dtype}")
    if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
        raise TfcError(f"{where}: pixels contain NaN or Inf")
    return pixels


def _check_labels(labels, count: int, where: str) -> Optional[np.ndarray]:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer) or (count and labels.min() < 0):
        raise TfcError(f"{where}: labels must be {count} non-negative class indices, got shape {labels.shape} "
                       f"dtype {labels.dtype}")
    return labels.astype(np.int64)


def _prepare(pixels: np.ndarray, prep: Preprocessing, where: str) -> np.ndarray:
    """Raw pixels [B, h, w, C] -> normalized [B, H, W, C], as files are (resize, channel order, normalize)."""
    if pixels.shape[-1] != prep.channels:
        raise TfcError(f"{where}: images have {pixels.shape[-1]} channels but the model takes {prep.channels}")
    if pixels.shape[1:3] != (prep.height, prep.width):
        if pixels.dtype != np.uint8:
            raise TfcError(f"{where}: images are {pixels.shape[1]}x{pixels.shape[2]}, the model takes "
                           f"{prep.height}x{prep.width}; only uint8 pixels are resized")
        pixels = np.stack([resize_pixels(p, prep) for p in pixels])
    if prep.channel_order == "bgr":
        pixels = pixels[..., ::-1]
    return prep.normalize(pixels)


class ArraySource(ImageSource):
    """An (N, H, W, C) array of raw pixel values (not normalized), with optional labels."""

    def __init__(self, pixels, labels=None, class_names: Optional[Sequence[str]] = None):
        self.pixels = _check_pixels(pixels, "image array")
        if len(self.pixels) == 0:
            raise TfcError("image array: no images")
        self.labels = _check_labels(labels, len(self.pixels), "image array")
        self.class_names = list(class_names) if class_names is not None else None
        self.description = f"an array of {len(self.pixels)} images"

    def __len__(self) -> int:
        return len(self.pixels)

    def batches(self, prep: Preprocessing, batch_size: int = 32) -> Iterator[np.ndarray]:
        for start in range(0, len(self.pixels), batch_size):
            yield _prepare(self.pixels[start:start + batch_size], prep, "image array")

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.pixels.dtype.str}{self.pixels.shape}".encode())
        h.update(np.ascontiguousarray(self.pixels).tobytes())
        return h.hexdigest()


class DatasetSource(ImageSource):
    """A `tf.data.Dataset` of raw-pixel batches (N, H, W, C), or of (pixels, labels) batches.

    The dataset is read once, when the source is made, and its batches are
    kept: calibration and evaluation read it again, and a dataset that
    shuffles would otherwise give other images each time.  Use a folder for
    image sets too large for memory.
    """

    def __init__(self, dataset):
        pixels, labels = [], []
        for element in dataset.as_numpy_iterator():
            if isinstance(element, tuple):
                if len(element) != 2:
                    raise TfcError("tf.data images: each element must be pixels or (pixels, labels)")
                batch, batch_labels = element
                labels.append(np.asarray(batch_labels).reshape(-1))
            else:
                batch = element
            batch = np.asarray(batch)
            pixels.append(batch[None] if batch.ndim == 3 else batch)
        if not pixels:
            raise TfcError("tf.data images: the dataset is empty")
        try:
            stacked = np.concatenate(pixels)
        except ValueError as e:
            raise TfcError(f"tf.data images: batches of different shapes ({e})") from e
        self._array = ArraySource(stacked, np.concatenate(labels) if labels else None)
        self.labels = self._array.labels
        self.description = f"a tf.data.Dataset of {len(stacked)} images"

    def __len__(self) -> int:
        return len(self._array)

    def batches(self, prep: Preprocessing, batch_size: int = 32) -> Iterator[np.ndarray]:
        return self._array.batches(prep, batch_size)

    def fingerprint(self) -> str:
        return self._array.fingerprint()


def as_source(images, *, labels=None, labels_file: Optional[str] = None, require_labels: bool = False,
              limit: Optional[int] = None) -> Optional[ImageSource]:
    """An ImageSource from a folder path, image file paths, a pixel array, a tf.data.Dataset or a source.

    None gives None.

    Args:
      images: what the user passed.
      labels: class indices for an array (for a folder, its class subfolders give them).
      labels_file: for a folder: names in the model's output order.
      require_labels: refuse unlabelled images.
      limit: for a folder: read only the first `limit` images.

    Raises:
      TfcError: an unknown kind of input, a missing folder, no images, bad shapes or labels.
    """
    if images is None or isinstance(images, ImageSource):
        source = images
    elif isinstance(images, (str, os.PathLike)):
        source = FolderSource(os.fspath(images), labels_file, require_labels=require_labels, limit=limit)
    elif isinstance(images, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in images):
        source = FolderSource.from_paths(images)
    elif isinstance(images, np.ndarray):
        source = ArraySource(images, labels)
    elif type(images).__module__.startswith("tensorflow") and hasattr(images, "as_numpy_iterator"):
        source = DatasetSource(images)
    else:
        raise TfcError(f"images must be a folder path, an (N, H, W, C) pixel array or a tf.data.Dataset, "
                       f"not {type(images).__name__}")
    if source is not None and require_labels and not source.labelled:
        raise TfcError(f"{source.description} has no labels")
    return source
