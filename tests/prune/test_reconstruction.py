"""ThiNet refitted to the original model's outputs (`filters.Reference`, `filters.reconstruct_kernels`; He et
al., arXiv:1707.06168): the refit itself, what it does to compounding errors, and batch-norm statistics."""

import sys

import numpy as np
import pytest

from tfcompress.prune import filters, thinning


def _zoo_images(zoo_name, count, heldout=False):
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.evaluate.zoo import ZOO
    zoo = ZOO[zoo_name]
    model = keras.saving.load_model(zoo.path, safe_mode=True, compile=False)
    h, w, c = model.inputs[0].shape[1:]
    folder = zoo.heldout if heldout else zoo.calibration
    return model, next(iter_batches(list_images(folder), Preprocessing(height=h, width=w, channels=c, mean=zoo.mean,
                                                                        std=zoo.std), count))


# Kernel least squares with every channel kept and the model as its own target returns the kernel, but for the
# ridge term (filters.RIDGE, 1e-3 of the mean diagonal): relative RMS change of the outputs.
REFIT_RTOL = 1e-2


@pytest.mark.parametrize("zoo_name", ["resnet_patches", "xception_digits", "mobilenetv2_patches"])
def test_kernel_reconstruction_with_every_channel_kept_returns_the_model(zoo_name):
    """`reconstruct_kernels` refits every conv consumer of every group (3x3 and 1x1 convs, separable convs'
    pointwise rows) from sampled windows; with nothing removed and the model as its own reference the refit
    must give the model back, which fails for any misplaced row, tap or output channel."""
    model, x = _zoo_images(zoo_name, 48)
    want = model.predict(x, verbose=0)
    current = thinning.thin(model, {})
    refitted = 0
    for group in thinning.plan(model):
        kinds = {type(current.get_layer(c)).__name__ for c in group.consumers}
        refitted += len(kinds - {"Dense"})
        filters.reconstruct_kernels(current, group, np.arange(group.channels), x, 0, filters.Reference(model, {}))
    assert refitted >= 3
    got = current.predict(x, verbose=0)
    assert np.sqrt(np.mean((got - want) ** 2)) / np.std(want) < REFIT_RTOL


def test_reconstruction_to_the_original_keeps_thinet_from_compounding_errors():
    """MobileNetV2-style zoo net, every group thinned to half its channels one after another, no training: with
    the original model's outputs as each layer's target (He et al.'s reconstruction) the held-out outputs stay
    far closer to the original's than with ThiNet's scaling of the current model's outputs, whose errors
    compound from layer to layer."""
    model, x = _zoo_images("mobilenetv2_patches", 100)
    _, held = _zoo_images("mobilenetv2_patches", 100, heldout=True)
    want = model.predict(held, verbose=0)
    error, agreement = {}, {}
    for to_original in (False, True):
        config = filters.FilterConfig(criterion="thinet", ratio=0.5, to_original=to_original)
        got = filters.prune_filters(model, config, x).model.predict(held, verbose=0)
        error[to_original] = float(np.mean((got - want) ** 2) / np.var(want))
        agreement[to_original] = float(np.mean(got.argmax(1) == want.argmax(1)))
    assert error[True] < 0.5 * error[False], error
    assert agreement[True] > agreement[False] + 0.1, agreement


@pytest.mark.parametrize("to_original", [False, True])
def test_batch_norm_statistics_are_kept_when_reconstructing_to_the_original(to_original, monkeypatch):
    """ThiNet refitted to the original's outputs leaves every batch norm its statistics (no pass over the few
    images, which would move them); ThiNet's own rescaling re-estimates them after thinning and at the end."""
    from tfcompress.keras import train as trainer
    model, x = _zoo_images("resnet_patches", 64)
    reset = []
    real_reset = trainer.set_bn_statistics
    monkeypatch.setattr(trainer, "set_bn_statistics", lambda m, b: reset.append(m) or real_reset(m, b))
    config = filters.FilterConfig(criterion="thinet", ratio=0.5, layers=("conv2d_19",), to_original=to_original)
    result = filters.prune_and_finetune(model, config, x, None, trainer.TrainConfig(epochs=0, verbose=0),
                                        teacher=model, layer_epochs=0)
    assert result.pruned == {"conv2d_19": (16, 8)}
    assert len(reset) == (0 if to_original else 2)
    if to_original:
        for layer in result.model.layers:
            if layer.name.startswith("batch_normalization") and layer.name in {l.name for l in model.layers}:
                same = model.get_layer(layer.name)
                if same.moving_mean.shape == layer.moving_mean.shape:
                    np.testing.assert_array_equal(layer.moving_mean.numpy(), same.moving_mean.numpy())


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
