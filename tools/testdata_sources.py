"""The raw data the test-data tools train and calibrate on, from packages only (no download).

Flag-free, so tools/make_testdata.py, tools/make_zoo.py and the benchmarks import it.
"""

SIZE = 32


def _digits_8x8():
    """(uint8 8x8 images scaled from sklearn's 0..16 to 0..255, labels)."""
    import numpy as np
    from sklearn.datasets import load_digits
    digits = load_digits()
    return np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8), digits.target.astype(np.int64)


def digit_images():
    """(uint8 images [N, 32, 32], labels [N]) from sklearn's 8x8 digits, upscaled bilinearly."""
    import numpy as np
    from PIL import Image
    small, labels = _digits_8x8()
    big = np.stack([np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
                    for im in small])
    return big, labels


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


def training_patches():
    """(uint8 patches [6000, 32, 32, 3], labels): 600 seeded patches from the top 65% of each source photo (the
    zoo's training set; testdata ships patches from the bottom only), half of them mirrored."""
    import numpy as np
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for label, photo in enumerate(patch_sources().values()):
        h, w = photo.shape[:2]
        train = sample_patches(photo, (0, int(h * 0.65)), (0, w), 600, rng)
        flip = rng.random(len(train)) < 0.5
        train[flip] = train[flip, :, ::-1]
        xs.append(train)
        ys.extend([label] * len(train))
    return np.concatenate(xs), np.asarray(ys, np.int64)


def small_digits():
    """(uint8 8x8 digits scaled to 0..255, labels, (shipped calibration, shipped held-out, unshipped) indices)."""
    import numpy as np
    from tfcompress.evaluate.zoo import shipped_digits
    small, labels = _digits_8x8()
    cal, held = (np.array(i) for i in shipped_digits(labels))
    train = np.array(sorted(set(range(len(labels))) - set(cal) - set(held)))
    return small, labels, (cal, held, train)


def place_digits(images, rng, copies):
    """Canvases with each 8x8-derived digit resized to 12..24 px at a random place; (canvases, boxes)."""
    import numpy as np
    from PIL import Image
    canvases, boxes = [], []
    for _ in range(copies):
        for img in images:
            side = int(rng.integers(12, 25))
            y0, x0 = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
            canvas = np.zeros((SIZE, SIZE), np.uint8)
            canvas[y0:y0 + side, x0:x0 + side] = np.asarray(
                Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR))
            canvases.append(canvas)
            boxes.append([x0 / SIZE, y0 / SIZE, (x0 + side) / SIZE, (y0 + side) / SIZE])
    return np.stack(canvases), np.asarray(boxes, np.float32)
