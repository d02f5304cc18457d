"""Fresh views of a few images, for a teacher to label on the fly ("function matching").

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (arXiv:2106.05237): when the student learns only from the
teacher, every training image can be replaced by a new view of it (a crop,
a mix of two images), because the target is the teacher's output on that
very view, never a label that the view might no longer match.  Teacher and
student see the same pixels ("consistent"), and a long schedule over many
such views ("patient") matches the teacher's function over a neighbourhood
of the data instead of its outputs at a few points, so that a student
fine-tuned on a couple of hundred images does not just learn those images.

The views here: a random shift of up to an eighth of the image, edges
reflected (images only: rank-4 NHWC), then mixup within the batch (Zhang et
al., "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412) with a
mixing weight drawn uniformly from [0, 1] per example.  Only half of each
batch is made of views; the other half are the images as they are.  Views
alone pull a small student towards inputs it will never be given: on
digits, where a shifted or blended digit is far from any real one, they
cost the zoo's thinned mini-Xception 10 points of agreement that the clean
half keeps (the README's speed benchmark).
"""

from typing import Iterator

import numpy as np

# A shift moves the image by up to size // _SHIFT_DIVISOR pixels each way.
_SHIFT_DIVISOR = 8


def shifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image of NHWC x moved by its own random offset, the edges reflected; other ranks come back as they are."""
    if x.ndim != 4:
        return x
    n, h, w, _ = x.shape
    ph, pw = h // _SHIFT_DIVISOR, w // _SHIFT_DIVISOR
    if not ph and not pw:
        return x
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * ph + 1, n), rng.integers(0, 2 * pw + 1, n)
    return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def mixed(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each example mixed with another of the batch, lam * a + (1 - lam) * b, lam ~ U(0, 1) per example."""
    lam = rng.uniform(size=(len(x),) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return lam * x + (1 - lam) * x[rng.permutation(len(x))]


def views(x: np.ndarray, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of x: each pass shuffles x; in every batch the first half is shifted and mixed (among
    themselves), the second half are images of x as they are.

    Batches are full (min(batch_size, len(x)) images); a pass's remainder is
    left for the next shuffle.  The same seed gives the same views.
    """
    rng = np.random.default_rng(seed)
    size = min(batch_size, len(x))
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - size + 1, size):
            batch = np.asarray(x[order[start:start + size]], np.float32)
            half = (size + 1) // 2
            yield np.concatenate([mixed(shifted(batch[:half], rng), rng), batch[half:]])
