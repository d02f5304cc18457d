"""Filter thinning: the thinned model equals the original with the removed channels' consumer rows zeroed."""

import os
import sys

import numpy as np
import pytest

from tests.conftest import zeroed_reference
from tfcompress.errors import TfcError
from tfcompress.keras.cost import count
from tfcompress.prune import filters, thinning

# Thinning only removes terms from sums: float32 reordering apart, outputs are the same.
THIN_ATOL = 1e-4


def test_plan_groups_residual_channels_and_leaves_outputs_whole(digits):
    model, _ = digits
    groups = {p.name: p for p in thinning.plan(model)}
    assert {name: p.producers for name, p in groups.items()} == {
        # The stem and the first block's last conv meet at a residual Add; so do the second block's convs.
        "conv2d": ["conv2d", "conv2d_2"], "conv2d_1": ["conv2d_1"], "conv2d_3": ["conv2d_3", "conv2d_5"],
        "conv2d_4": ["conv2d_4"], "conv2d_6": ["conv2d_6"], "conv2d_7": ["conv2d_7"], "dense": ["dense"]}
    assert groups["conv2d"].consumers == ["conv2d_1", "conv2d_3"] and "add" in groups["conv2d"].path
    # The second Add's space reaches a depthwise conv, a 1x1 conv and (through the concat) conv2d_7.
    assert groups["conv2d_3"].consumers == ["conv2d_4", "conv2d_6", "conv2d_7"]
    assert {"add_1", "depthwise_conv2d", "concatenate"} <= set(groups["conv2d_3"].path)
    assert groups["conv2d_6"].consumers == ["conv2d_7"] and "concatenate" in groups["conv2d_6"].path
    assert groups["dense"].consumers == ["probabilities"]  # The output layer loses input rows, not outputs.


def test_thinned_model_equals_the_zeroed_reference(digits):
    model, x = digits
    keep = {"conv2d_1": np.arange(0, 16, 2), "conv2d_6": np.array([1, 4, 5, 9]), "conv2d_7": np.arange(24)}
    thinned = thinning.thin(model, keep)
    removed = {
        "conv2d_2": np.setdiff1d(np.arange(16), keep["conv2d_1"]),
        "conv2d_7": 32 + np.setdiff1d(np.arange(16), keep["conv2d_6"]),  # After 32 depthwise channels.
        "dense": np.setdiff1d(np.arange(48), keep["conv2d_7"]),
    }
    reference = zeroed_reference(model, removed)
    np.testing.assert_allclose(thinned.predict(x[:64], verbose=0), reference.predict(x[:64], verbose=0),
                               atol=THIN_ATOL)
    assert thinned.get_layer("conv2d_1").kernel.shape[-1] == 8
    assert thinned.get_layer("conv2d_2").kernel.shape[-2] == 8
    assert thinned.get_layer("batch_normalization_1").gamma.shape[0] == 8
    assert thinned.get_layer("conv2d_7").kernel.shape[-2] == 32 + 4
    assert thinned.get_layer("dense").kernel.shape[0] == 24
    params, macs = count(thinned)
    params0, macs0 = count(model)
    assert params < params0 and macs < macs0


def test_flatten_and_depthwise_paths():
    import keras
    from keras import layers
    inp = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 3, padding="same")(inp)
    a = layers.BatchNormalization()(a)
    a = layers.DepthwiseConv2D(3, padding="same")(a)
    a = layers.ReLU()(a)
    b = layers.Conv2D(4, 1)(a)
    b = layers.MaxPooling2D(2)(b)
    f = layers.Flatten()(b)
    out = layers.Dense(3, name="head")(f)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 + (1.0 if w.ndim == 1 else 0.0)
                       for w in model.get_weights()])
    first, second = model.layers[1].name, model.layers[5].name
    keep = {first: np.array([0, 2, 3]), second: np.array([1, 3])}
    thinned = thinning.thin(model, keep)
    flat_rows = (np.arange(16)[:, None] * 4 + np.array([0, 2])[None, :]).reshape(-1)  # 4x4 positions x 4 channels.
    reference = zeroed_reference(model, {second: np.array([1, 4, 5]), "head": flat_rows})
    x = rng.standard_normal((5, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(thinned.predict(x, verbose=0), reference.predict(x, verbose=0), atol=THIN_ATOL)
    assert thinned.get_layer("head").kernel.shape[0] == 16 * 2


def test_thinet_reconstructs_the_next_layer_best(digits):
    import keras
    model, x = digits
    seen, unseen = x[:200], x[200:]
    consumer = keras.Model(model.inputs, model.get_layer("conv2d_2").output)
    reference = consumer.predict(unseen, verbose=0)
    errors = {}
    for criterion in ("l1", "random", "thinet"):
        result = filters.prune_filters(model, filters.FilterConfig(criterion=criterion, ratio=0.5,
                                                                   layers=("conv2d_1",)), seen)
        out = keras.Model(result.model.inputs, result.model.get_layer("conv2d_2").output).predict(unseen, verbose=0)
        errors[criterion] = float(np.sqrt(np.mean((out - reference) ** 2)) / np.std(reference))
    assert errors["thinet"] < errors["l1"] and errors["thinet"] < errors["random"], errors


def test_thinned_model_saves_smaller_and_converts(digits, tmp_path):
    from tfcompress.evaluate.artifacts import tflite_cost
    from tfcompress.export import flatbuffer as fb
    from tfcompress.export.tflite import TfliteConfig, convert_tflite
    from tfcompress.graph.passes import optimize
    from tfcompress.io.atomic import save_keras
    from tfcompress.io.loaders import freeze_keras_model
    model, x = digits
    result = filters.prune_filters(model, filters.FilterConfig(criterion="l1", ratio=0.5), x[:100])
    assert result.pruned == {"conv2d": (16, 8), "conv2d_2": (16, 8), "conv2d_1": (16, 8), "conv2d_3": (32, 16),
                             "conv2d_5": (32, 16), "conv2d_4": (32, 16), "conv2d_6": (16, 8), "conv2d_7": (48, 24),
                             "dense": (32, 16)}
    _, macs0 = count(model)
    _, macs = count(result.model)
    assert macs <= 0.3 * macs0  # Every conv loses half its filters and half its input rows: about a quarter.
    inside = filters.prune_filters(model, filters.FilterConfig(criterion="l1", ratio=0.5, residual_groups=False),
                                   x[:100])
    assert inside.pruned == {"conv2d_1": (16, 8), "conv2d_4": (32, 16), "conv2d_6": (16, 8), "conv2d_7": (48, 24),
                             "dense": (32, 16)}
    save_keras(model, str(tmp_path / "a.keras"))
    save_keras(result.model, str(tmp_path / "b.keras"))
    assert os.path.getsize(tmp_path / "b.keras") < os.path.getsize(tmp_path / "a.keras")
    frozen, _ = optimize(freeze_keras_model(result.model, "thin"))
    flatbuffer = convert_tflite(frozen, TfliteConfig(quantize="none")).flatbuffer
    assert tflite_cost(fb.parse(flatbuffer)).macs == macs


def test_separable_convs_thin_as_producers_and_consumers():
    """A separable conv loses pointwise filters as a producer, and depthwise channels (with the pointwise rows
    they feed, depth multiplier 2) as a consumer."""
    import keras
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    h = layers.SeparableConv2D(10, 3, depth_multiplier=2, padding="same", activation="relu", name="sep")(h)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.SeparableConv2D(6, 3, padding="same", name="sep_out")(h)
    model = keras.Model(inp, layers.Dense(3)(layers.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(1).random((16, 12, 12, 3)).astype(np.float32)
    assert {p.name for p in thinning.plan(model)} == {"conv", "sep", "sep_out"}
    keep = {"conv": np.array([0, 3, 4, 7]), "sep": np.array([1, 2, 5, 8, 9])}
    thinned = thinning.thin(model, keep)
    reference = zeroed_reference(model, {"sep": np.setdiff1d(np.arange(8), keep["conv"]),
                                            "sep_out": np.setdiff1d(np.arange(10), keep["sep"])})
    np.testing.assert_allclose(thinned.predict(x, verbose=0), reference.predict(x, verbose=0), atol=THIN_ATOL)
    params, _ = count(thinned)
    assert params == sum(int(np.prod(w.shape)) for l in thinned.layers if not isinstance(l, keras.layers.BatchNormalization)
                         for w in l.weights)
    assert thinned.get_layer("sep").depthwise_kernel.shape == (3, 3, 4, 2)
    assert thinned.get_layer("sep").pointwise_kernel.shape == (1, 1, 8, 5)
    # L1 on a separable producer uses its pointwise filters.
    result = filters.prune_filters(model, filters.FilterConfig(criterion="l1", ratio=0.5, layers=("sep",)), x)
    assert result.pruned == {"sep": (10, 5)}


def test_bad_filter_requests(digits):
    import keras
    model, x = digits
    with pytest.raises(TfcError, match="--ratio must be in \\(0, 1\\)"):
        filters.FilterConfig(ratio=1.0)
    with pytest.raises(TfcError, match="cannot thin probabilities"):
        filters.prune_filters(model, filters.FilterConfig(layers=("probabilities",)), x[:10])
    with pytest.raises(TfcError, match="cannot thin conv2d_2"):
        filters.prune_filters(model, filters.FilterConfig(layers=("conv2d_2",), residual_groups=False), x[:10])
    with pytest.raises(TfcError, match="keep the same channels in every operand of add"):
        thinning.thin(model, {"conv2d": np.arange(8)})  # Half a group: the Add's operands would differ.
    inp = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same")(inp)
    residual = keras.Model(inp, keras.layers.Add()([y, keras.layers.Conv2D(4, 1)(y)]))
    with pytest.raises(TfcError, match="no prunable conv/dense layer"):
        filters.prune_filters(residual, filters.FilterConfig(), np.zeros((2, 8, 8, 3), np.float32))
    odd = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
                            keras.layers.Reshape((-1,), name="r"), keras.layers.Dense(2)])
    reasons = {}
    assert thinning.plan(odd, untracked_reach=reasons) == []
    assert reasons == {"c": "its channels reach r (Reshape that moves the channel axis), which thinning does not track"}
    with pytest.raises(TfcError, match="no prunable conv/dense layer .*c: its channels reach r \\(Reshape that moves"):
        filters.prune_filters(odd, filters.FilterConfig(), np.zeros((2, 8, 8, 3), np.float32))


def test_untracked_layers_exclude_only_the_channels_that_reach_them():
    """A Rescaling at the input and a Permute on the box head's path: the conv feeding the Permute is left whole
    and named, the other conv is thinned, and the result equals the original with that conv's removed channels'
    consumer rows zeroed."""
    import keras
    from keras import layers
    inp = keras.Input((12, 12, 3))
    x = layers.Rescaling(1 / 255.0)(inp)
    a = layers.ReLU()(layers.Conv2D(8, 3, padding="same", name="a")(x))
    b = layers.ReLU()(layers.Conv2D(6, 3, padding="same", name="b")(a))
    box = layers.Dense(4, name="box")(layers.Flatten()(layers.Permute((2, 1, 3), name="swap")(b)))
    cls = layers.Dense(10, activation="softmax", name="class")(layers.GlobalAveragePooling2D()(b))
    model = keras.Model(inp, [cls, box])
    x_in = np.random.default_rng(0).uniform(0, 255, (16, 12, 12, 3)).astype(np.float32)
    result = filters.prune_filters(model, filters.FilterConfig(criterion="l1", ratio=0.5), x_in)
    assert result.pruned == {"a": (8, 4)}
    assert result.skipped == {"b": "its channels reach swap (Permute), which thinning does not track"}
    kept = np.sort(np.argsort(-np.abs(keras.ops.convert_to_numpy(model.get_layer("a").kernel)).sum((0, 1, 2)),
                              kind="stable")[:4])
    reference = zeroed_reference(model, {"b": np.setdiff1d(np.arange(8), kept)})
    for got, want in zip(result.model.predict(x_in, verbose=0), reference.predict(x_in, verbose=0)):
        np.testing.assert_allclose(got, want, atol=THIN_ATOL)


def test_thinet_contributions_through_a_separable_conv_sum_to_its_output():
    """Per-input-channel contributions to a separable conv's sampled outputs (depth multiplier 2, stride 2) add
    up to what the layer itself computes there, bias aside."""
    import keras
    from tfcompress.prune import filters
    rng = np.random.default_rng(3)
    inp = keras.Input((9, 9, 5))
    layer = keras.layers.SeparableConv2D(7, 3, strides=2, padding="same", depth_multiplier=2, use_bias=False)
    model = keras.Model(inp, layer(inp))
    a = rng.standard_normal((4, 9, 9, 5))
    points = filters._points(layer, a, np.random.default_rng(0), 200)
    contrib, total = filters._separable_contributions(layer, a, points)
    out = model.predict(a.astype(np.float32), verbose=0)
    draw = np.random.default_rng(0)  # The same draws, in the same order: image, row, column, output channel.
    n, ys, xs = draw.integers(0, 4, 200), draw.integers(0, out.shape[1], 200), draw.integers(0, out.shape[2], 200)
    o = draw.integers(0, 7, 200)
    np.testing.assert_allclose(total, out[n, ys, xs, o], rtol=1e-4, atol=1e-5)
    assert contrib.shape == (200, 5)


def test_thinet_thins_the_layers_feeding_separable_convs():
    """On the zoo's mini-Xception, every conv whose channels feed a separable conv (not a residual Add) is
    thinned by ThiNet, and the thinned model equals the original with those consumers' rows zeroed and scaled."""
    import keras
    from tfcompress.evaluate.zoo import ZOO, digits_training_set
    from tfcompress.prune import filters
    model = keras.saving.load_model(ZOO["xception_digits"].path, safe_mode=True, compile=False)
    x = digits_training_set(64)[0][..., :1]  # The zoo's digits net takes one channel.
    plans = [p for p in thinning.plan(model)
             if any(isinstance(model.get_layer(c), keras.layers.SeparableConv2D) for c in p.consumers)]
    assert len(plans) >= 3
    for target in plans:
        kept, scales = filters.thinet_keep(model, target, target.channels // 2, x, seed=0)
        thinned = thinning.thin(model, target.keep(kept), scales)
        removed = np.setdiff1d(np.arange(target.channels), kept)
        reference = zeroed_reference(model, {name: removed for name in scales}, scales)
        np.testing.assert_allclose(thinned.predict(x, verbose=0), reference.predict(x, verbose=0), atol=THIN_ATOL)


@pytest.mark.parametrize("zoo_name", ["resnet_patches", "se_patches", "mobilenetv2_patches", "xception_digits"])
def test_residual_and_se_groups_thin_to_the_zeroed_reference(zoo_name):
    """Every group with several producers (projection and identity shortcuts, inverted residuals, an SE block's
    excitation layer beside the conv it scales, separable convs beside 1x1 projections) loses the same channels
    in all of them: the result equals the original with those channels' rows zeroed in every consumer, for a
    seeded random choice and for ThiNet's choice with its per-consumer rescaling."""
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.evaluate.zoo import ZOO
    zoo = ZOO[zoo_name]
    model = keras.saving.load_model(zoo.path, safe_mode=True, compile=False)
    h, w, c = model.inputs[0].shape[1:]
    x = next(iter_batches(list_images(zoo.calibration), Preprocessing(height=h, width=w, channels=c, mean=zoo.mean,
                                                                      std=zoo.std), 48))
    groups = [p for p in thinning.plan(model) if len(p.producers) > 1]
    assert len(groups) >= 3
    rng = np.random.default_rng(0)
    for group in groups:
        for consumer in group.consumers:  # Each reads the space itself: its input rows are the group's channels.
            assert model.get_layer(consumer).input.shape[-1] == group.channels
        random_keep = np.sort(rng.choice(group.channels, group.channels // 2, replace=False))
        thinet_keep, scales = filters.thinet_keep(model, group, group.channels // 2, x, seed=0)
        for kept, factors in ((random_keep, None), (thinet_keep, scales)):
            thinned = thinning.thin(model, group.keep(kept), factors)
            for name in group.producers:
                assert thinning.output_kernel(thinned.get_layer(name)).shape[-1] == len(kept)
            removed = np.setdiff1d(np.arange(group.channels), kept)
            reference = zeroed_reference(model, {name: removed for name in group.consumers}, factors)
            np.testing.assert_allclose(thinned.predict(x, verbose=0), reference.predict(x, verbose=0),
                                       atol=THIN_ATOL)
    params, macs = count(model)
    thinned = thinning.thin(model, {k: v for g in groups for k, v in g.keep(np.arange(g.channels // 2)).items()})
    assert count(thinned)[0] < params and count(thinned)[1] < macs


def test_thinet_reconstructs_through_concat_and_flatten(digits):
    """ThiNet on a group whose consumers read it through a Concatenate (the shipped model's second residual
    group, at offset 0 of conv2d_7's input) and through a Flatten (the boxes model's last conv before its dense
    trunk): the result equals the zeroed-and-scaled reference, with rows mapped by hand, and the flattened
    consumer's output is reconstructed better than after a random choice."""
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.evaluate.zoo import ZOO
    model, x = digits
    group = next(p for p in thinning.plan(model) if p.name == "conv2d_3")
    kept, scales = filters.thinet_keep(model, group, 16, x[:64], seed=0)
    removed = np.setdiff1d(np.arange(32), kept)
    assert scales["conv2d_7"].shape == (48,) and np.all(scales["conv2d_7"][32:] == 1.0)
    reference = zeroed_reference(model, {"conv2d_4": removed, "conv2d_6": removed, "conv2d_7": removed}, scales)
    np.testing.assert_allclose(thinning.thin(model, group.keep(kept), scales).predict(x[:64], verbose=0),
                               reference.predict(x[:64], verbose=0), atol=THIN_ATOL)

    boxes = keras.saving.load_model(ZOO["boxes_digits"].path, safe_mode=True, compile=False)
    images = next(iter_batches(list_images(ZOO["boxes_digits"].calibration),
                               Preprocessing(height=32, width=32, channels=1, mean=0.0, std=255.0), 100))
    seen, unseen = images[:60], images[60:]
    group = next(p for p in thinning.plan(boxes) if p.name == "conv2d_48")
    assert group.consumers == ["dense_7"] and "flatten_1" in group.path
    kept, scales = filters.thinet_keep(boxes, group, 24, seen, seed=0)
    removed = np.setdiff1d(np.arange(48), kept)
    rows = (np.arange(16)[:, None] * 48 + removed[None, :]).reshape(-1)  # 4x4 positions x 48 channels.
    thinned = thinning.thin(boxes, group.keep(kept), scales)
    for got, want in zip(thinned.predict(unseen, verbose=0),
                         zeroed_reference(boxes, {"dense_7": rows}, scales).predict(unseen, verbose=0)):
        np.testing.assert_allclose(got, want, atol=THIN_ATOL)
    trunk = keras.Model(boxes.inputs, boxes.get_layer("dense_7").output).predict(unseen, verbose=0)

    def error(model):
        out = keras.Model(model.inputs, model.get_layer("dense_7").output).predict(unseen, verbose=0)
        return float(np.sqrt(np.mean((out - trunk) ** 2)) / np.std(trunk))
    random = np.sort(np.random.default_rng(0).choice(48, 24, replace=False))
    errors = error(thinned), error(thinning.thin(boxes, group.keep(random)))  # Measured 0.13 and 0.48.
    assert errors[0] < errors[1], errors

def test_efficientnet_groups_reach_through_se_reshape_and_swish():
    """keras.applications EfficientNetB0 (Rescaling and Normalization at the input, swish, SE blocks of global
    pooling, Reshape, two 1x1 convs and a Multiply, identity Adds): every conv but the classifier is in a
    prunable group, and thinning its largest SE group equals the zeroed reference."""
    import keras
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=10)
    groups = thinning.plan(model)
    convs = [l.name for l in model.layers if type(l).__name__ in thinning.LINEAR]
    assert sorted(set(convs) - {p for g in groups for p in g.producers}) == ["predictions"]
    se = max((g for g in groups if any("se_expand" in p for p in g.producers)), key=lambda g: len(g.producers))
    block = next(p for p in se.producers if p.endswith("_se_expand"))[:-len("se_expand")]
    assert {block + "se_squeeze", block + "se_reshape", block + "se_excite"} <= set(se.path)
    assert {block + "se_reduce", block + "project_conv"} <= set(se.consumers)
    kept = np.sort(np.random.default_rng(1).choice(se.channels, se.channels // 2, replace=False))
    thinned = thinning.thin(model, se.keep(kept))
    removed = np.setdiff1d(np.arange(se.channels), kept)
    reference = zeroed_reference(model, {name: removed for name in se.consumers})
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    want = reference.predict(x, verbose=0)
    np.testing.assert_allclose(thinned.predict(x, verbose=0), want, atol=THIN_ATOL * float(np.abs(want).max()))
    assert count(thinned)[0] < count(model)[0]


def test_a_broadcasting_multiply_is_named_and_left_whole():
    """Spatial attention (a one-channel sigmoid map times the features) broadcasts over channels: the features'
    conv and the attention conv are left whole and the Multiply named; the conv feeding both is still thinned."""
    import keras
    from keras import layers
    inp = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(inp)
    f = layers.Conv2D(8, 3, padding="same", name="f")(a)
    attention = layers.Conv2D(1, 1, activation="sigmoid", name="attention")(a)
    gated = layers.Multiply(name="gate")([f, attention])
    model = keras.Model(inp, layers.Dense(3)(layers.GlobalAveragePooling2D()(gated)))
    reasons = {}
    assert [p.name for p in thinning.plan(model, untracked_reach=reasons)] == ["a"]
    why = "its channels reach gate (Multiply broadcasting over channels), which thinning does not track"
    assert reasons == {"f": why, "attention": why}


@pytest.mark.parametrize("epochs", [0, 1])
def test_a_fine_tunes_batch_norm_statistics_stand(epochs, monkeypatch):
    """After a global fine-tune the thinned model keeps the moving averages the fine-tune left in its batch norms
    (no re-estimation from the few images afterwards); without one, they are re-estimated on the images."""
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.evaluate.zoo import ZOO
    from tfcompress.keras import train as trainer
    zoo = ZOO["resnet_patches"]
    model = keras.saving.load_model(zoo.path, safe_mode=True, compile=False)
    x = next(iter_batches(list_images(zoo.calibration), Preprocessing(height=32, width=32, channels=3, mean=zoo.mean,
                                                                      std=zoo.std), 64))
    fitted, reset, momenta = [], [], []
    real_fit, real_reset = trainer.fit, trainer.set_bn_statistics

    def fit(student, *args, **kwargs):
        momenta.append({l.momentum for l in student.layers if isinstance(l, keras.layers.BatchNormalization)})
        history = real_fit(student, *args, **kwargs)
        fitted.append([w.numpy().copy() for l in student.layers if isinstance(l, keras.layers.BatchNormalization)
                       for w in (l.moving_mean, l.moving_variance)])
        return history

    monkeypatch.setattr(trainer, "fit", fit)
    monkeypatch.setattr(trainer, "set_bn_statistics", lambda m, b: reset.append(m) or real_reset(m, b))
    config = filters.FilterConfig(criterion="l1", ratio=0.5, layers=("conv2d_19",))
    train = trainer.TrainConfig(epochs=epochs, batch_size=32, verbose=0)
    result = filters.prune_and_finetune(model, config, x, None, train, teacher=model, layer_epochs=0)
    stats = [w.numpy() for l in result.model.layers if isinstance(l, keras.layers.BatchNormalization)
             for w in (l.moving_mean, l.moving_variance)]
    assert result.pruned == {"conv2d_19": (16, 8)}
    if epochs:  # One re-estimation, after thinning and before the fine-tune; the fine-tune's averages stand.
        assert len(fitted) == 1 and len(reset) == 1
        for got, want in zip(stats, fitted[0]):
            np.testing.assert_array_equal(got, want)
        # 2 steps: the averages forget all but STALE_SHARE of the statistics they started with, then the
        # layers get their own momentum back.
        assert len(momenta) == 1 and len(momenta[0]) == 1
        assert momenta[0].pop() == pytest.approx(trainer.STALE_SHARE ** (1 / train.steps(len(x))))
        assert {l.momentum for l in result.model.layers if isinstance(l, keras.layers.BatchNormalization)} == {0.99}
    else:  # After thinning, and once more at the end, with nothing trained in between.
        assert not fitted and len(reset) == 2 and reset[-1] is result.model


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
