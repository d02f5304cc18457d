"""The raw data the test-data tools train and calibrate on, from packages only (no download).

Flag-free, so both tools/make_testdata.py and tools/make_zoo.py import it.
"""

SIZE = 32


def digit_images():
    """(uint8 images [N, 32, 32], labels [N]) from sklearn's 8x8 digits, upscaled bilinearly."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
                    for im in small])
    return big, digits.target.astype(np.int64)


PATCH_SOURCES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "rocket")
PATCH_SHORT_SIDE = 128


def patch_sources():
    """{name: uint8 RGB photo, short side PATCH_SHORT_SIDE} from scikit-image's bundled samples."""
    import numpy as np
    from PIL import Image
    import skimage.data
    photos = {}
    for name in PATCH_SOURCES:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        h, w = img.shape[:2]
        scale = PATCH_SHORT_SIDE / min(h, w)
        photos[name] = np.asarray(Image.fromarray(img[..., :3]).resize(
            (round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
    return photos


def sample_patches(photo, rows, cols, count, rng):
    """`count` SIZE x SIZE patches whose top-left corners lie in rows x cols (half-open ranges)."""
    import numpy as np
    ys = rng.integers(rows[0], rows[1] - SIZE + 1, count)
    xs = rng.integers(cols[0], cols[1] - SIZE + 1, count)
    return np.stack([photo[y:y + SIZE, x:x + SIZE] for y, x in zip(ys, xs)])
