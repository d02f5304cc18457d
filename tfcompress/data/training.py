"""Training images: a labelled folder (DIR/<label>/*) or an unlabelled one, as float arrays."""

from typing import List, Optional, Tuple

import numpy as np

from tfcompress.data.images import Preprocessing, iter_batches
from tfcompress.errors import TfcError
from tfcompress.data.folders import read_image_set


def load_training_images(folder: str, prep: Preprocessing, *, labels_file: Optional[str] = None,
                         require_labels: bool = False, num_classes: Optional[int] = None
                         ) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[List[str]]]:
    """(images [N, H, W, C] float32, labels or None, class names or None).

    A folder with no class subfolders is unlabelled (see `evaluate.dataset`).

    Raises:
      TfcError: no images; labels required but the folder is unlabelled; class
        count different from the model's outputs.
    """
    images = read_image_set(folder, labels_file, require_labels=require_labels)
    if images.labelled and num_classes is not None and len(images.class_names) != num_classes:
        raise TfcError(f"{folder} has {len(images.class_names)} classes but the model outputs {num_classes}")
    x = np.concatenate(list(iter_batches(images.paths, prep, 64)))
    return x, images.labels, images.class_names
