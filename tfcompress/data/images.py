"""Decoding image files into normalized NHWC float batches.

Every image is decoded with Pillow, mapped to the model's channel count,
resized to the model's H×W (bilinear, deterministic), put in the model's
channel order and normalized as `(pixel - mean) / std`, with one mean and std
for all channels or one per channel.  The defaults (mean 0, std 255) give
[0, 1]; keras.applications' Caffe-style models take BGR with mean
(103.939, 116.779, 123.68) and std 1.
"""

import dataclasses
import os
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfcompress.errors import TfcError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


Norm = Union[float, Tuple[float, ...]]
CHANNEL_ORDERS = ("rgb", "bgr")


def _norm_value(value, channels: int, name: str) -> Norm:
    """One float, or a tuple of one float per channel (a 1-element sequence is one float)."""
    values = [value] if np.ndim(value) == 0 else list(value)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise TfcError(f"--{name} must be numbers, got {value!r}") from e
    if len(values) == 1:
        return values[0]
    if len(values) != channels:
        raise TfcError(f"--{name} has {len(values)} values but the model input has {channels} channels")
    return tuple(values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How pixels become model input.

    Attributes:
      height, width, channels: the model's input H, W, C (C in 1, 3, 4).
      mean, std: normalization (pixel - mean) / std: one float, or one per channel in the model's order.
      resize: Pillow resampling filter name.
      channel_order: "rgb", or "bgr" for 3-channel models trained on BGR (Caffe-style).
    """
    height: int
    width: int
    channels: int
    mean: Norm = 0.0
    std: Norm = 255.0
    resize: str = "bilinear"
    channel_order: str = "rgb"

    def __post_init__(self):
        if self.channels not in (1, 3, 4):
            raise TfcError(f"model input has {self.channels} channels; images map only to 1, 3 or 4")
        object.__setattr__(self, "mean", _norm_value(self.mean, self.channels, "input_mean"))
        object.__setattr__(self, "std", _norm_value(self.std, self.channels, "input_std"))
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        if not np.all(np.isfinite(std)) or np.any(std == 0) or not np.all(np.isfinite(mean)):
            raise TfcError(f"--input_std must be finite non-zero numbers (got {self.std}); "
                           f"--input_mean finite (got {self.mean})")
        if self.channel_order not in CHANNEL_ORDERS:
            raise TfcError(f"--channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")
        if self.channel_order == "bgr" and self.channels != 3:
            raise TfcError(f"--channel_order=bgr needs a 3-channel model; this one has {self.channels}")

    def as_dict(self) -> dict:
        """A JSON-ready form (the calibration cache's fingerprint); RGB order is left implicit."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        if self.channel_order == "rgb":
            del out["channel_order"]
        return out

    @property
    def means(self) -> List[float]:
        """The mean per channel (one value repeated for a scalar mean), for metadata."""
        return list(self.mean) if isinstance(self.mean, tuple) else [self.mean]

    @property
    def stds(self) -> List[float]:
        return list(self.std) if isinstance(self.std, tuple) else [self.std]

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """[..., H, W, C] pixels in the model's channel order -> float32 (pixel - mean) / std."""
        return ((pixels.astype(np.float32) - np.asarray(self.mean, np.float32))
                / np.asarray(self.std, np.float32)).astype(np.float32)

    @classmethod
    def for_input(cls, shape, *, mean: Norm, std: Norm, channel_order: str = "rgb") -> "Preprocessing":
        """From an NHWC input shape (batch dim ignored)."""
        _, h, w, c = shape
        return cls(height=int(h), width=int(w), channels=int(c), mean=mean, std=std, channel_order=channel_order)


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


# Decoded images larger than this are refused before their pixels are read (a decompression bomb is a few KB).
MAX_PIXELS = 64_000_000


def _to_channels(img: Image.Image, channels: int, path: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (Pillow opens 16-bit PNGs as I;16 or I): the full 0..65535 range maps to 0..255.
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise TfcError(f"image {path} has {mode} values outside 0..65535; only 8- and 16-bit images are read")
        img = Image.fromarray(np.round(arr * (255.0 / 65535.0)).astype(np.uint8), "L")
        mode = "L"
    if mode in ("F", "I;32", "RGBX", "RGBa", "La", "HSV", "LAB"):
        raise TfcError(f"image {path} has mode {mode} (float, 32-bit or premultiplied pixels); convert it to "
                       "8-bit RGB or grayscale first")
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


def resize_pixels(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 [h, w, C] pixels resized to the model's H×W, channel by channel (a no-op at that size)."""
    if pixels.shape[:2] == (prep.height, prep.width):
        return pixels
    resized = [np.asarray(Image.fromarray(pixels[..., c]).resize(
        (prep.width, prep.height), _FILTERS[prep.resize])) for c in range(pixels.shape[-1])]
    return np.stack(resized, axis=-1)


def load_pixels(path: str, prep: Preprocessing) -> np.ndarray:
    """One image file as uint8 [H, W, C] pixels at the model's size, in the model's channel order.

    Raises:
      TfcError: unreadable file, or channels that cannot be mapped to the model.
    """
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise TfcError(f"image {path} is {img.width}x{img.height}: more than {MAX_PIXELS:,} pixels; "
                               "resize it first")
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img = ImageOps.exif_transpose(img)  # As a viewer shows it: the camera's EXIF orientation applied.
            pixels = _to_channels(img, prep.channels, path)
    except Image.DecompressionBombError as e:
        raise TfcError(f"image {path} is larger than {MAX_PIXELS:,} pixels; resize it first") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise TfcError(f"cannot read image {path}: {type(e).__name__}") from e
    pixels = resize_pixels(pixels, prep)
    return pixels[..., ::-1] if prep.channel_order == "bgr" else pixels


def load_image(path: str, prep: Preprocessing) -> np.ndarray:
    """One image file as float32 [H, W, C], normalized (see `load_pixels`)."""
    return prep.normalize(load_pixels(path, prep))


def iter_batches(paths: Sequence[str], prep: Preprocessing, batch_size: int = 32) -> Iterator[np.ndarray]:
    """Yields [B, H, W, C] float32 batches; only one batch is in memory at a time."""
    for start in range(0, len(paths), batch_size):
        yield np.stack([load_image(p, prep) for p in paths[start:start + batch_size]])
