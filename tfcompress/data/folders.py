"""Evaluation image sets: a labelled folder (DIR/<label>/*.png) or a flat folder of unlabelled images.

A folder whose images all sit in subfolders is labelled: each immediate
subfolder is a class, and classes are numbered in sorted name order, as
Keras' `image_dataset_from_directory` numbers them.  A labels file (one name
per line, in the model's output order) overrides that numbering; every class
folder must then be one of its names.  A folder with images at its top level
is unlabelled: all images below it are read, for agreement and latency only.
"""

import dataclasses
import os
from typing import List, Optional, Sequence, Union

import numpy as np

from tfcompress.data.images import EXTENSIONS, list_images
from tfcompress.errors import TfcError


@dataclasses.dataclass
class ImageSet:
    """Image paths, with labels when the folder is labelled.

    Attributes:
      paths: sorted image paths.
      labels: class index per path (None when unlabelled).
      class_names: names in output order (None when unlabelled).
    """
    paths: List[str]
    labels: Optional[np.ndarray] = None
    class_names: Optional[List[str]] = None

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def read_labels_file(path: str) -> List[str]:
    """One label per line, in output order (blank lines at the end are ignored).

    Raises:
      TfcError: missing, unreadable or empty file, a blank line between labels (it would shift every label
        after it by one output), or duplicate labels.
    """
    if not os.path.isfile(path):
        raise TfcError(f"labels file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise TfcError(f"labels file {path} is unreadable or not UTF-8 text ({type(e).__name__})") from e
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise TfcError(f"labels file {path} is empty")
    blank = next((i for i, line in enumerate(lines) if not line), None)
    if blank is not None:
        raise TfcError(f"labels file {path}: line {blank + 1} is blank; one label per line, in output order")
    duplicates = sorted({name for name in lines if lines.count(name) > 1})
    if duplicates:
        raise TfcError(f"labels file {path} has duplicate labels: {', '.join(duplicates[:5])}")
    return lines


def read_image_set(folder: str, labels_file: Union[str, Sequence[str], None] = None,
                   require_labels: bool = False) -> ImageSet:
    """Reads an evaluation folder (see the module docstring).

    `labels_file` orders the classes: a labels file's path, or the names themselves (a model's metadata
    labels, which do not require the folder to be labelled).

    Raises:
      TfcError: missing folder or no images; labels requested but the folder
        has no class subfolders; an empty class folder; a class folder not in
        the labels file.
    """
    paths = list_images(folder)
    top_level = [f for f in os.listdir(folder)
                 if os.path.isfile(os.path.join(folder, f)) and f.lower().endswith(EXTENSIONS)]
    class_dirs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if top_level or not class_dirs:
        if require_labels or isinstance(labels_file, str):
            raise TfcError(f"image folder {folder} has no classes: a labelled folder holds only class "
                           "subfolders (DIR/<label>/*.png)")
        return ImageSet(paths=paths)
    names = (read_labels_file(labels_file) if isinstance(labels_file, str) else list(labels_file)) \
        if labels_file else class_dirs
    index = {n: i for i, n in enumerate(names)}
    labelled_paths, labels = [], []
    for d in class_dirs:
        if d not in index:
            where = f"the labels file {labels_file}" if isinstance(labels_file, str) else "the model's labels"
            raise TfcError(f"class folder {d!r} of {folder} is not in {where}")
        try:
            members = list_images(os.path.join(folder, d))
        except TfcError as e:
            raise TfcError(f"class folder {os.path.join(folder, d)} has no images") from e
        labelled_paths.extend(members)
        labels.extend([index[d]] * len(members))
    return ImageSet(paths=labelled_paths, labels=np.asarray(labels, np.int64), class_names=names)


def check_output_size(images: ImageSet, outputs: int, source: str = "the labels") -> None:
    """Raises TfcError if a labelled set's class count does not match the model's output size."""
    if images.labelled and images.class_names is not None and len(images.class_names) != outputs:
        raise TfcError(f"{source} name {len(images.class_names)} classes but the model outputs {outputs} values")
