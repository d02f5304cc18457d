"""Function matching: the views (shift with reflected edges, mixup within the batch, half of each batch) and
training on them."""

import sys

import numpy as np
import pytest

from tfcompress.keras import views

# Pixels are float32 and a shift only moves them: compared exactly.
EXACT = 0.0
# A mixed pair's weights sum to one up to float32 rounding.
SUM_TOLERANCE = 1e-6


def _reflect(j: int, n: int) -> int:
    """Index j of an axis of n, reflected about the edge pixels (…, 2, 1, [0, 1, …, n-1], n-2, …)."""
    return -j if j < 0 else (2 * (n - 1) - j if j >= n else j)


def _offset(out: np.ndarray, image: np.ndarray, most: int):
    """The (dy, dx) with out[r, c] == image[reflect(r + dy), reflect(c + dx)] everywhere, or None."""
    h, w = image.shape[:2]
    for dy in range(-most, most + 1):
        for dx in range(-most, most + 1):
            moved = np.array([[image[_reflect(r + dy, h), _reflect(c + dx, w)] for c in range(w)] for r in range(h)])
            if np.max(np.abs(moved - out)) <= EXACT:
                return dy, dx
    return None


def test_a_shift_moves_each_image_by_at_most_an_eighth_with_reflected_edges():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 16, 24, 3)).astype(np.float32)  # distinct values: only one offset can match
    out = views.shifted(x, np.random.default_rng(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    offsets = [_offset(out[i], x[i], 3) for i in range(len(x))]
    assert all(o is not None for o in offsets), offsets
    assert all(abs(dy) <= 16 // 8 and abs(dx) <= 24 // 8 for dy, dx in offsets), offsets
    assert len(set(offsets)) > 3, offsets  # offsets differ from image to image
    vectors = rng.normal(size=(5, 7)).astype(np.float32)
    assert views.shifted(vectors, rng) is vectors  # not an image: not shifted


def test_mixup_pairs_examples_of_the_batch_with_weights_summing_to_one():
    x = np.eye(10, dtype=np.float32)  # row i is the i-th basis vector: a mix shows its two weights
    out = views.mixed(x, np.random.default_rng(3))
    assert out.shape == x.shape
    assert np.all(out >= 0) and np.all(np.count_nonzero(out, axis=1) <= 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=SUM_TOLERANCE)
    assert np.count_nonzero(out.max(axis=1) < 1.0) > 5  # most rows are real mixes, not copies


def test_views_are_full_batches_fixed_by_the_seed():
    x = np.random.default_rng(4).uniform(size=(20, 8, 8, 1)).astype(np.float32)

    def first(seed, count=5):
        stream = views.views(x, 8, seed)
        return [next(stream) for _ in range(count)]

    a, b, c = first(0), first(0), first(1)
    assert all(v.shape == (8, 8, 8, 1) for v in a)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))
    assert all(v.min() >= x.min() and v.max() <= x.max() for v in a)  # convex mixes of moved pixels
    rows = {image.tobytes() for image in x}
    assert all(image.tobytes() not in rows for v in a for image in v[:4])  # the first half: views
    assert all(image.tobytes() in rows for v in a for image in v[4:])  # the second: the images as they are
    assert next(views.views(x[:3], 8, 0)).shape[0] == 3  # fewer images than a batch: batches of all of them


class _Recording:
    """A teacher that keeps every batch it is asked to label."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def __call__(self, x, training=False):
        self.seen.append(np.array(x))
        return self.model(x, training=training)

    def __getattr__(self, name):  # layers, predict, …: the model's own (predict is not recorded)
        return getattr(self.model, name)


def _two_heads(seed):
    import keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, [keras.layers.Dense(4, activation="softmax", name="class")(h),
                                keras.layers.Dense(2, name="box")(h)])


def _train(x, teacher, seed=0):
    from tfcompress.keras.train import TrainConfig, fit
    student = _two_heads(seed + 1)
    recording = _Recording(teacher)
    history = fit(student, x, None, TrainConfig(epochs=30, batch_size=8, verbose=0, seed=seed, learning_rate=1e-2,
                                                function_matching=True), teacher=recording)
    return student, recording, history


def test_function_matching_trains_every_head_on_views_the_teacher_labels():
    from tfcompress.keras.heads import predict_all
    x = np.random.default_rng(5).uniform(size=(32, 12, 12, 1)).astype(np.float32)
    teacher = _two_heads(0)
    student, recording, history = _train(x, teacher)
    steps = 30 * 32 // 8
    assert len(recording.seen) >= steps  # one labelled batch per step (tf.data may draw a few ahead)
    assert all(batch.shape == (8, 12, 12, 1) for batch in recording.seen)
    rows = {row.tobytes() for row in x}
    assert not any(image.tobytes() in rows for batch in recording.seen for image in batch[:4])  # views
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    held = np.random.default_rng(6).uniform(size=(64, 12, 12, 1)).astype(np.float32)
    ref, got, untrained = predict_all(teacher, held), predict_all(student, held), predict_all(_two_heads(1), held)
    assert np.mean(np.abs(got[1] - ref[1])) < 0.5 * np.mean(np.abs(untrained[1] - ref[1]))
    assert np.mean(np.abs(got[0] - ref[0])) < 0.5 * np.mean(np.abs(untrained[0] - ref[0]))
    again, _, _ = _train(x, teacher)
    assert all(np.array_equal(a, b) for a, b in zip(student.get_weights(), again.get_weights()))


def test_labels_keep_the_images_as_they_are():
    from tfcompress.keras.train import TrainConfig, fit
    import keras
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(7).uniform(size=(16, 12, 12, 1)).astype(np.float32)
    teacher = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    student = keras.models.clone_model(teacher)
    recording = _Recording(teacher)
    fit(student, x, np.arange(16) % 3, TrainConfig(epochs=1, verbose=0, function_matching=True), teacher=recording)
    assert recording.seen == []  # with labels, the teacher labels the images once (predict), never views


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
