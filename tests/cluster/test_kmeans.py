"""k-means weight sharing: the 1-D k-means against a brute-force reference, kept zeros, and codebook training."""

import numpy as np
import pytest

from tfcompress.cluster import kmeans
from tfcompress.keras.train import SharedWeights, TrainConfig, _shared_gradient, fit
from tfcompress.errors import TfcError

# Codewords must stay exactly shared through training: members get bit-identical updates.
SHARED_SPREAD = 0.0


def _lloyd_reference(values, centroids, iterations):
    """Plain Lloyd iterations with a full distance matrix (the definition, not the searchsorted shortcut)."""
    c = np.asarray(centroids, np.float64)
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - c[None, :]), axis=1)
        c = np.array([values[labels == j].mean() for j in range(len(c)) if np.any(labels == j)])
    return c


def test_kmeans_matches_brute_force_lloyd():
    values = np.random.default_rng(0).normal(size=3000)
    centroids, labels = kmeans.kmeans_1d(values, 8, "linear", iterations=200)
    reference = _lloyd_reference(values, np.linspace(values.min(), values.max(), 8), 200)
    np.testing.assert_allclose(centroids, np.sort(reference), rtol=1e-9)
    # A fixed point: every value sits at its nearest centroid, every centroid is its members' mean.
    assert np.array_equal(labels, np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1))
    for j, c in enumerate(centroids):
        assert c == pytest.approx(values[labels == j].mean(), rel=1e-12)


def test_initializations():
    values = np.sort(np.random.default_rng(1).standard_t(3, size=5000))
    rng = np.random.default_rng(0)
    linear = kmeans.initial_centroids(values, 5, "linear", rng)
    assert linear[0] == values.min() and linear[-1] == values.max()
    np.testing.assert_allclose(np.diff(linear), np.diff(linear)[0])
    density = kmeans.initial_centroids(values, 5, "density", rng)
    np.testing.assert_allclose(density, np.quantile(values, [0.1, 0.3, 0.5, 0.7, 0.9]))
    plus = kmeans.initial_centroids(values, 5, "kmeans++", rng)
    assert len(plus) == 5 and set(plus) <= set(values)
    # Density puts centroids where the weights are; linear spreads them over the heavy tails.
    assert np.ptp(density) < np.ptp(linear)


def test_few_distinct_values_are_their_own_codebook():
    centroids, labels = kmeans.kmeans_1d(np.array([0.5, -1.0, 0.5, 2.0]), 16)
    np.testing.assert_array_equal(centroids, [-1.0, 0.5, 2.0])
    np.testing.assert_array_equal(labels, [1, 0, 1, 2])


@pytest.mark.parametrize("clusters", [1, 257])
def test_cluster_count_out_of_range(clusters):
    with pytest.raises(TfcError, match="between 2 and 256"):
        kmeans.ClusterConfig(clusters=clusters)


def test_shared_gradient_is_the_sum_over_members():
    import tensorflow as tf
    groups = np.array([[0, 1, -1], [1, 0, 2]])
    grad = np.arange(6, dtype=np.float32).reshape(2, 3) + 1.0
    summed = _shared_gradient(tf.constant(grad), SharedWeights(groups, "sum")).numpy()
    expected = np.zeros_like(grad)
    for g in range(3):
        expected[groups == g] = grad[groups == g].sum()
    np.testing.assert_array_equal(summed, expected)  # The frozen element (-1) gets no gradient.
    mean = _shared_gradient(tf.constant(grad), SharedWeights(groups, "mean")).numpy()
    for g in range(3):
        expected[groups == g] = grad[groups == g].mean()
    np.testing.assert_allclose(mean, expected, rtol=1e-6)


def test_cluster_keeps_zeros_and_trains_codebooks(digits):
    model, x = digits
    from tfcompress.keras.fold import fold_batch_norm
    kernel = model.get_layer("conv2d_7").kernel
    original = kernel.numpy().copy()
    pruned = original.copy()
    pruned[np.abs(pruned) < np.quantile(np.abs(pruned), 0.8)] = 0.0
    kernel.assign(pruned)
    try:
        config = kmeans.ClusterConfig(clusters=8, layers=("conv2d_7", "dense"))
        result, clustered = kmeans.cluster_model(model, config)
        by_layer = {k.layer: k for k in clustered}
        before = result.get_layer("conv2d_7").kernel.numpy()
        assert np.array_equal(before == 0, pruned == 0)  # The pruned zeros are kept, and no new ones appear.
        assert by_layer["conv2d_7"].codewords == 9 and len(np.unique(before)) == 9  # 8 centroids + the zero.
        # The shared values are plain Lloyd's centroids of the (BN-folded) kernel's non-zero weights.
        folded = fold_batch_norm(model)[0].get_layer("conv2d_7").kernel.numpy().astype(np.float64)
        nonzero = folded[folded != 0]
        reference = _lloyd_reference(nonzero, np.linspace(nonzero.min(), nonzero.max(), 8), config.iterations)
        np.testing.assert_allclose(np.unique(before[before != 0]), np.sort(reference).astype(np.float32),
                                   rtol=1e-6)
        # Storage: 4 bits (9 codewords) per weight and 8 float32 centroids.
        assert by_layer["conv2d_7"].bits == before.size * 4 + 8 * 32
        teacher_out = model.predict(x[:64], verbose=0)
        fit(result, x[:128], None, TrainConfig(epochs=1, verbose=0), teacher=model,
            shared=kmeans.sharing(clustered))
        spread = kmeans.read_codebooks(result, clustered)
        assert spread <= SHARED_SPREAD
        after = result.get_layer("conv2d_7").kernel.numpy()
        assert np.array_equal(after == 0, pruned == 0)
        assert len(np.unique(after)) == 9
        assert not np.allclose(after, before)  # The codebook did train.
        # Members of a codeword moved together: weights that shared a value before training share one after.
        for value in np.unique(before[before != 0]):
            assert np.ptp(after[before == value]) == 0.0
        assert result.predict(x[:64], verbose=0).shape == teacher_out.shape
    finally:
        kernel.assign(original)  # The module's shared model goes back as it was.


def test_nan_weights_and_unknown_layers_are_refused(digits):
    model, _ = digits
    with pytest.raises(TfcError, match="no layer named nope"):
        kmeans.cluster_model(model, kmeans.ClusterConfig(layers=("nope",)))
    bad = model.get_layer("dense").kernel
    saved = bad.numpy().copy()
    broken = saved.copy()
    broken[0, 0] = np.nan
    bad.assign(broken)
    try:
        with pytest.raises(TfcError, match="dense has NaN"):
            kmeans.cluster_model(model, kmeans.ClusterConfig(layers=("dense",)))
    finally:
        bad.assign(saved)


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
