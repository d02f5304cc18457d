"""Reading a folder of images into normalized NHWC float batches.

Every image is decoded with Pillow, mapped to the model's channel count,
resized to the model's H×W (bilinear, deterministic) and normalized as
`(pixel - mean) / std`.  The defaults (mean 0, std 255) give [0, 1].
"""

import dataclasses
import hashlib
import os
from typing import Iterator, List, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from tfcompress.errors import TfcError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How pixels become model input.

    Attributes:
      height, width, channels: the model's input H, W, C (C in 1, 3, 4).
      mean, std: per-pixel normalization, (pixel - mean) / std.
      resize: Pillow resampling filter name.
    """
    height: int
    width: int
    channels: int
    mean: float = 0.0
    std: float = 255.0
    resize: str = "bilinear"

    def __post_init__(self):
        if self.channels not in (1, 3, 4):
            raise TfcError(f"model input has {self.channels} channels; images map only to 1, 3 or 4")
        if not np.isfinite(self.std) or self.std == 0 or not np.isfinite(self.mean):
            raise TfcError(f"--input_std must be a finite non-zero number (got {self.std}); "
                           f"--input_mean finite (got {self.mean})")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_input(cls, shape, *, mean: float, std: float) -> "Preprocessing":
        """From an NHWC input shape (batch dim ignored)."""
        _, h, w, c = shape
        return cls(height=int(h), width=int(w), channels=int(c), mean=float(mean), std=float(std))


def list_images(folder: str) -> List[str]:
    """Image paths below `folder`, recursively, in sorted (deterministic) order.

    Raises:
      TfcError: the folder is missing, or holds no png/jpg/bmp/gif file.
    """
    if not os.path.isdir(folder):
        raise TfcError(f"image folder {folder} does not exist or is not a directory")
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        paths.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(EXTENSIONS))
    if not paths:
        raise TfcError(f"image folder {folder} has no images ({', '.join(EXTENSIONS)})")
    return paths


def _to_channels(img: Image.Image, channels: int, path: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / (65535.0 if arr.max() > 255 else 1.0) * (255.0 if arr.max() > 255 else 1.0)
        img = Image.fromarray(arr.astype(np.uint8), "L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("1", "L", "LA"):
        gray = np.asarray(img.convert("L"))
        if channels == 1:
            return gray[..., None]
        if channels == 3:
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.asarray(img.convert("RGBA"))
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        if channels == 1:
            rgb = np.asarray(img.convert("RGB")).astype(np.int16)
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
                return rgb[..., :1].astype(np.uint8)
            raise TfcError(f"image {path} is color ({mode}) but the model takes 1 channel; "
                           "convert the images to grayscale first")
        if channels == 3:
            if mode == "RGBA":
                alpha = np.asarray(img)[..., 3]
                if alpha.min() < 255:
                    raise TfcError(f"image {path} has transparency (RGBA) and the model takes 3 channels")
            return np.asarray(img.convert("RGB"))
        return np.asarray(img.convert("RGBA"))
    raise TfcError(f"image {path} has mode {mode}, which cannot be mapped to {channels} channels")


_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
            "bicubic": Image.Resampling.BICUBIC}


def load_image(path: str, prep: Preprocessing) -> np.ndarray:
    """One image as float32 [H, W, C], normalized.

    Raises:
      TfcError: unreadable file, or channels that cannot be mapped to the model.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            pixels = _to_channels(img, prep.channels, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise TfcError(f"cannot read image {path}: {type(e).__name__}") from e
    if pixels.shape[:2] != (prep.height, prep.width):
        resized = [np.asarray(Image.fromarray(pixels[..., c]).resize(
            (prep.width, prep.height), _FILTERS[prep.resize])) for c in range(pixels.shape[-1])]
        pixels = np.stack(resized, axis=-1)
    return ((pixels.astype(np.float32) - np.float32(prep.mean)) / np.float32(prep.std)).astype(np.float32)


def iter_batches(paths: Sequence[str], prep: Preprocessing, batch_size: int = 32) -> Iterator[np.ndarray]:
    """Yields [B, H, W, C] float32 batches; only one batch is in memory at a time."""
    for start in range(0, len(paths), batch_size):
        yield np.stack([load_image(p, prep) for p in paths[start:start + batch_size]])


def fingerprint_files(paths: Sequence[str], root: str) -> str:
    """sha256 over relative names and contents: identifies an image set."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.relpath(p, root).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()
