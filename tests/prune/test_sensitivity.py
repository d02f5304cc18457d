"""Sensitivity curves against a computation made here, and the proposed sparsity map."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import KERAS_MODEL, ROOT
from tfcompress.evaluate.zoo import digits_training_set
from tfcompress.errors import TfcError
from tfcompress.prune import magnitude, sensitivity


@pytest.fixture(scope="module")
def analyzed():
    import keras
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)
    before = [w.copy() for w in model.get_weights()]
    x, _ = digits_training_set(200)
    result = sensitivity.analyze(model, x, (0.5, 0.8, 0.95))
    return model, before, x, result


def test_curve_matches_an_independent_pruning(analyzed):
    import keras
    model, before, x, result = analyzed
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # Restored after the analysis.
    copy = keras.models.clone_model(model)
    copy.set_weights(before)
    kernel = copy.get_layer("conv2d_4").get_weights()
    w = kernel[0].copy()
    order = np.argsort(np.abs(w).ravel(), kind="stable")
    w.reshape(-1)[order[:int(round(0.8 * w.size))]] = 0.0
    copy.get_layer("conv2d_4").set_weights([w] + kernel[1:])
    expected = np.mean(copy.predict(x, verbose=0).argmax(1) == model.predict(x, verbose=0).argmax(1))
    assert result.agreement["conv2d_4"][1] == pytest.approx(float(expected))
    assert set(result.agreement) == {l.name for l in model.layers if isinstance(l, magnitude.PRUNABLE)}


def test_proposal_reaches_the_target_and_prunes_robust_layers_harder(analyzed):
    model, _, _, result = analyzed
    proposal = sensitivity.propose(result, 0.7)
    total = sum(result.weights.values())
    reached = sum(proposal[n] * result.weights[n] for n in proposal) / total
    assert reached >= 0.7 and all(0.0 <= s <= 0.95 for s in proposal.values())
    # The dense layer keeps its agreement far longer than the first conv, so it is pruned harder.
    assert result.agreement["dense"][1] > result.agreement["conv2d"][1]
    assert proposal["dense"] > proposal["conv2d"]
    magnitude.prune_low_magnitude(model, magnitude.ConstantSparsity(0.5), sparsity_map=proposal)
    with pytest.raises(TfcError, match="beyond the largest analyzed sparsity"):
        sensitivity.propose(result, 0.97)


def test_bad_grid(analyzed):
    model, _, x, _ = analyzed
    with pytest.raises(TfcError, match="must be in \\(0, 1\\)"):
        sensitivity.analyze(model, x[:4], (0.5, 1.0))
    with pytest.raises(TfcError, match="cannot analyze batch_normalization"):
        sensitivity.analyze(model, x[:4], (0.5,), layers=("batch_normalization",))


def test_cli_writes_curves_and_a_sparsity_map(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    tool = os.path.join(ROOT, "tools", "sensitivity.py")
    proc = subprocess.run([sys.executable, tool, f"--output={tmp_path}/s.png", "--target_sparsity=0.6",
                           "--sparsities=0.5,0.8"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = next(l for l in proc.stdout.splitlines() if l.startswith("--sparsity_map="))
    assert len(line.split("=", 1)[1].split(",")) == 11
    bad = subprocess.run([sys.executable, tool, f"--output={tmp_path}/s.txt"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert bad.returncode == 1 and "must name a .png file" in bad.stderr and not (tmp_path / "s.txt").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
