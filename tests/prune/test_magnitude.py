"""Magnitude pruning: schedules against their formulas, masks against numpy, training, stripping, export."""

import gzip
import sys

import numpy as np
import pytest

from tests.conftest import HELDOUT, KERAS_MODEL
from tfcompress.errors import TfcError
from tfcompress.evaluate.zoo import digits_training_set
from tfcompress.prune import magnitude

# At 50% sparsity, distilled on 1,000 digits for 3 epochs, the pruned model must keep this agreement.
MIN_AGREEMENT_AT_HALF = 0.97


def test_polynomial_schedule_follows_its_formula():
    s = magnitude.PolynomialDecay(0.1, 0.8, begin_step=10, end_step=110, power=3, frequency=25)
    for step in (0, 10, 35, 60, 110, 500):
        progress = min(max((step - 10) / 100, 0), 1)
        assert s.sparsity(step) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - progress) ** 3)
    assert [t for t in range(200) if s(t)[0]] == [10, 35, 60, 85, 110]
    c = magnitude.ConstantSparsity(0.5, begin_step=5, end_step=30, frequency=10)
    assert [t for t in range(40) if c(t)[0]] == [5, 15, 25] and c(7) == (False, 0.5)
    with pytest.raises(TfcError, match="in \\[0, 1\\)"):
        magnitude.ConstantSparsity(1.0)


def test_schedules_serialize_by_registered_name():
    import keras
    for s in (magnitude.PolynomialDecay(0.0, 0.9, 0, 100, power=2, frequency=7),
              magnitude.ConstantSparsity(0.6, 3, 50, 4)):
        config = keras.saving.serialize_keras_object(s)
        assert config["registered_name"].startswith("tfcompress>")
        again = keras.saving.deserialize_keras_object(config)
        assert type(again) is type(s) and again.get_config() == s.get_config()


def test_mask_zeroes_exactly_the_smallest_weights():
    w = np.random.default_rng(0).standard_normal((3, 3, 8, 16))
    mask = magnitude.magnitude_mask(w, 0.7)
    drop = int(round(0.7 * w.size))
    assert int((mask == 0).sum()) == drop
    threshold = np.sort(np.abs(w).ravel())[drop - 1]
    assert np.all(np.abs(w)[mask == 0] <= threshold) and np.all(np.abs(w)[mask == 1] >= threshold)
    with pytest.raises(TfcError, match="leaves no weight"):
        magnitude.magnitude_mask(np.ones(3), 0.9)


def test_two_of_four_keeps_the_two_largest_of_every_input_group():
    w = np.random.default_rng(1).standard_normal((3, 3, 8, 5))  # HWIO: groups of 4 along I.
    mask = magnitude.magnitude_mask(w, 0.0, m_by_n=(2, 4))
    groups_w = np.moveaxis(np.abs(w), 2, -1).reshape(-1, 4)
    groups_m = np.moveaxis(mask, 2, -1).reshape(-1, 4)
    assert np.all(groups_m.sum(1) == 2)
    kept_min = np.where(groups_m == 1, groups_w, np.inf).min(1)
    dropped_max = np.where(groups_m == 0, groups_w, -np.inf).max(1)
    assert np.all(kept_min >= dropped_max)
    with pytest.raises(TfcError, match="multiple of 4"):
        magnitude.magnitude_mask(np.ones((3, 3, 6, 2)), 0.0, m_by_n=(2, 4))


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    import keras
    from tfcompress.keras.train import TrainConfig, batches, fit, set_bn_statistics
    original = keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)
    before = [w.copy() for w in original.get_weights()]
    x, _ = digits_training_set(1000)
    schedule = magnitude.PolynomialDecay(0.0, 0.5, 0, 60, frequency=10)
    pruned = magnitude.prune_low_magnitude(original, schedule, sparsity_map={"conv2d_7": 0.75},
                                           exclude=["probabilities"], m_by_n=None)
    fit(pruned, x, None, TrainConfig(epochs=3, verbose=0), teacher=original,
        callbacks=[magnitude.UpdatePruningStep()])
    out = tmp_path_factory.mktemp("pruned")
    pruned.save(out / "wrapped.keras")
    stripped = magnitude.strip_pruning(pruned)
    set_bn_statistics(stripped, batches(x))
    return original, before, pruned, stripped, out


def test_targets_reached_exactly_and_original_untouched(pruned_run):
    original, before, _, stripped, _ = pruned_run
    for got, want in zip(original.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # The teacher did not move.
    sparsity = magnitude.sparsity_of(stripped)
    for name, (zeros, size) in sparsity.items():
        target = {"conv2d_7": 0.75, "probabilities": 0.0}.get(name, 0.5)
        # Exact zeros: at least the masked count (a surviving weight may be 0.0 by chance, never fewer).
        assert zeros >= int(round(target * size)) and zeros <= int(round(target * size)) + 1, (name, zeros)
    assert not any(type(l).__name__ == "PruneLowMagnitude" for l in stripped.layers)
    assert not getattr(stripped, "compiled", False)


def test_pruned_model_agrees_and_shrinks_once_zipped(pruned_run, tmp_path):
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.export.tflite import TfliteConfig, convert_tflite
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import freeze_keras_model
    original, _, _, stripped, _ = pruned_run
    prep = Preprocessing(height=32, width=32, channels=3)
    images = np.concatenate(list(iter_batches(list_images(HELDOUT), prep, 100)))
    agreement = np.mean(original.predict(images, verbose=0).argmax(1) == stripped.predict(images, verbose=0).argmax(1))
    assert agreement >= MIN_AGREEMENT_AT_HALF, agreement
    sizes = {}
    for name, model in (("original", original), ("pruned", stripped)):
        frozen, _ = optimize(freeze_keras_model(model, name))
        fb = convert_tflite(frozen, TfliteConfig(quantize="none")).flatbuffer
        sizes[name] = (len(fb), len(gzip.compress(fb, compresslevel=9, mtime=0)))
    assert sizes["pruned"][0] == sizes["original"][0]  # Zeros are stored densely ...
    assert sizes["pruned"][1] < sizes["original"][1] * 0.7, sizes  # ... and compress away.


def test_wrapped_model_reloads_with_schedule_masks_and_targets(pruned_run):
    import keras
    _, _, pruned, _, out = pruned_run
    again = keras.saving.load_model(out / "wrapped.keras", safe_mode=True)
    wrappers = {l.name: l for l in again.layers if isinstance(l, magnitude.PruneLowMagnitude)}
    originals = {l.name: l for l in pruned.layers if isinstance(l, magnitude.PruneLowMagnitude)}
    assert set(wrappers) == set(originals) and "prune_low_magnitude_probabilities" not in wrappers
    for name, layer in wrappers.items():
        assert layer.schedule.get_config() == originals[name].schedule.get_config()
        assert layer.target_sparsity == originals[name].target_sparsity
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.masks["kernel"]),
                                      keras.ops.convert_to_numpy(originals[name].masks["kernel"]))
    assert wrappers["prune_low_magnitude_conv2d_7"].target_sparsity == 0.75


def test_m_by_n_survives_save_and_reload(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
    wrapped = magnitude.prune_low_magnitude(model, magnitude.ConstantSparsity(0.5, frequency=1), m_by_n=(2, 4))
    wrapped.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert again.layers[0].m_by_n == (2, 4)


def test_separable_convs_are_pruned_in_both_kernels_and_the_report_is_true(tmp_path):
    """On the zoo's mini-Xception, both kernels of every separable conv reach the sparsity, and the figures
    reported are counted again here with numpy: per pruned layer, and over every trainable weight."""
    import keras
    from tfcompress.evaluate.zoo import ZOO
    model = keras.saving.load_model(ZOO["xception_digits"].path, safe_mode=True, compile=False)
    separable = [l.name for l in model.layers if isinstance(l, keras.layers.SeparableConv2D)]
    assert len(separable) >= 4
    wrapped = magnitude.prune_low_magnitude(model, magnitude.ConstantSparsity(0.5, frequency=1))
    wrappers = {l.layer.name: l for l in wrapped.layers if isinstance(l, magnitude.PruneLowMagnitude)}
    assert set(separable) <= set(wrappers)
    for wrapper in wrappers.values():
        wrapper.update_mask(0.5)
    wrapped.save(tmp_path / "wrapped.keras")
    again = keras.saving.load_model(tmp_path / "wrapped.keras", safe_mode=True)
    for layer in again.layers:
        if isinstance(layer, magnitude.PruneLowMagnitude):
            for name, mask in layer.masks.items():
                np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask),
                                              keras.ops.convert_to_numpy(wrappers[layer.layer.name].masks[name]))
    stripped = magnitude.strip_pruning(wrapped)
    for name in separable:
        layer = stripped.get_layer(name)
        for kernel in (layer.depthwise_kernel, layer.pointwise_kernel):
            k = keras.ops.convert_to_numpy(kernel)
            assert int(np.sum(k == 0)) == int(round(0.5 * k.size)), name
    reported = magnitude.sparsity_of(stripped)
    for name, (zeros, size) in reported.items():
        layer = stripped.get_layer(name)
        kernels = [keras.ops.convert_to_numpy(getattr(layer, n)) for n in magnitude.kernel_names(layer)]
        assert (zeros, size) == (sum(int(np.sum(k == 0)) for k in kernels), sum(k.size for k in kernels))
    every = [keras.ops.convert_to_numpy(w) for w in stripped.trainable_weights]
    zeros, size = magnitude.model_sparsity(stripped)
    assert (zeros, size) == (sum(int(np.sum(w == 0)) for w in every), sum(w.size for w in every))
    # Nearly every weight of this model is in a kernel: the whole model is close to half zeros, not 18%.
    assert zeros / size > 0.45


def test_bad_pruning_requests():
    import keras
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)
    schedule = magnitude.ConstantSparsity(0.5)
    with pytest.raises(TfcError, match="no layer named nope"):
        magnitude.prune_low_magnitude(model, schedule, exclude=["nope"])
    with pytest.raises(TfcError, match="cannot prune layer batch_normalization of type BatchNormalization"):
        magnitude.prune_low_magnitude(model, schedule, sparsity_map={"batch_normalization": 0.5})
    no_weights = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.MaxPooling2D(2)])
    with pytest.raises(TfcError, match="no prunable layer"):
        magnitude.prune_low_magnitude(no_weights, schedule)
    tiny = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="tiny")])
    with pytest.raises(TfcError, match="leaves layer tiny \\(3 weights\\) empty"):
        magnitude.prune_low_magnitude(tiny, magnitude.ConstantSparsity(0.9))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
