"""Sensitivity allocation of filter pruning: per-group sensitivity measured exactly, a MACs model that matches the
thinned model's count, and a MACs target met with the sensitive groups spared."""

import sys

import numpy as np
import pytest

from tests.conftest import MACS_ROUNDING
from tfcompress.errors import TfcError
from tfcompress.keras.cost import count
from tfcompress.prune import filters, thinning

# Emulated and real thinning differ only by float32 reordering of the same sums.
QUALITY_ATOL = 1e-4


def _relative_change(reference, outputs):
    """Independent of the module: mean over outputs of ||out - ref||^2 / ||ref - mean(ref)||^2."""
    terms = []
    for r, o in zip(reference, outputs):
        r, o = np.asarray(r, np.float64).reshape(len(r), -1), np.asarray(o, np.float64).reshape(len(o), -1)
        terms.append(np.sum((o - r) ** 2) / np.sum((r - r.mean(0)) ** 2))
    return float(np.mean(terms))


def _as_list(outputs):
    return outputs if isinstance(outputs, list) else [outputs]


@pytest.mark.parametrize("criterion", ["thinet", "l1"])
def test_measured_sensitivity_is_the_thinned_models_output_change(digits, criterion, monkeypatch):
    """For every group kind of the digits model (a lone conv, residual groups, a depthwise conv and a Concatenate
    on the path, a Flatten before a dense layer), the quality measured in place at each grid ratio equals one
    minus the output change of the model really thinned with the criterion's choice."""
    model, x = digits
    x = x[:96]
    monkeypatch.setattr(filters, "SENSITIVITY_GRID", (0.25, 0.75))
    groups = thinning.plan(model)
    config = filters.FilterConfig(criterion=criterion, ratio=0.5, allocation="sensitivity")
    curves = filters.group_sensitivity(model, groups, config, x)
    assert set(curves) == {g.name for g in groups}
    reference = _as_list(model.predict(x, verbose=0))
    before = [w.copy() for w in model.get_weights()]
    for group in groups:
        for ratio, quality in zip((0.25, 0.75), curves[group.name]):
            kept, scales = filters.choose(model, group, config, x, ratio)
            assert len(kept) == group.channels - round(ratio * group.channels)
            thinned = thinning.thin(model, group.keep(kept), scales)
            real = 1.0 - _relative_change(reference, _as_list(thinned.predict(x, verbose=0)))
            assert quality == pytest.approx(real, abs=QUALITY_ATOL), (group.name, ratio)
    for w, w0 in zip(model.get_weights(), before):  # Restored after measuring.
        np.testing.assert_array_equal(w, w0)


def test_macs_model_matches_the_thinned_models_count(digits):
    model, _ = digits
    groups = thinning.plan(model)
    rng = np.random.default_rng(0)
    keep = {g.name: int(rng.integers(1, g.channels + 1)) for g in groups}
    thinned = thinning.thin(model, {k: v for g in groups for k, v in g.keep(np.arange(keep[g.name])).items()})
    macs = filters.macs_after(model, groups)
    assert macs({}) == count(model)[1]
    ratios = {g.name: 1.0 - keep[g.name] / g.channels for g in groups}
    assert macs(ratios) == pytest.approx(count(thinned)[1], rel=1e-9)


def test_sensitivity_allocation_meets_the_macs_target_and_spares_sensitive_groups(digits):
    model, x = digits
    x = x[:128]
    config = filters.FilterConfig(criterion="thinet", ratio=0.5, allocation="sensitivity")
    groups = thinning.plan(model)
    curves = filters.group_sensitivity(model, groups, config, x)
    ratios = filters.allocate_ratios(model, groups, config, x)
    # A group at least as robust at every grid ratio as another is thinned at least as far.
    for a in groups:
        for b in groups:
            if np.all(np.minimum.accumulate(curves[a.name]) >= np.minimum.accumulate(curves[b.name])):
                assert ratios[a.name] >= ratios[b.name] - 1e-9, (a.name, b.name)
    assert len({round(r, 3) for r in ratios.values()}) > 1  # Not uniform.
    result = filters.prune_filters(model, config, x)
    assert count(result.model)[1] <= (1.0 - config.ratio + MACS_ROUNDING) * count(model)[1]
    for group in groups:
        _, after = result.pruned.get(group.producers[0], (group.channels, group.channels))
        assert after == group.channels - round(ratios[group.name] * group.channels)


def test_unreachable_macs_targets_are_refused():
    with pytest.raises(TfcError, match="beyond the largest per-group ratio"):
        filters.FilterConfig(criterion="l1", ratio=0.95, allocation="sensitivity")
    with pytest.raises(TfcError, match="unknown allocation"):
        filters.FilterConfig(criterion="l1", allocation="global")
    # A two-output model whose larger head is a conv straight from the input to an output: never thinned.
    import keras
    from keras import layers
    inp = keras.Input((12, 12, 3))
    whole = layers.Conv2D(32, 3, padding="same", name="whole")(inp)
    branch = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, [whole, layers.Conv2D(2, 1)(branch)])
    with pytest.raises(TfcError, match="cannot be removed"):
        filters.prune_filters(model, filters.FilterConfig(criterion="l1", ratio=0.5, allocation="sensitivity"),
                              np.random.default_rng(0).normal(size=(16, 12, 12, 3)).astype(np.float32))

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
