"""Fine-tuning never takes the process down: TF 2.21's oneDNN kernels corrupt the heap while training a model
with a stride-2 1x1 projection over a 60x60x8 map (`tfcompress/keras/kernels.py`), so the commands that
train run TF's own kernels unless --onednn_training, and the Python API does the same in a fresh process.

Every run here starts from the machine's own defaults (TF_ENABLE_ONEDNN_OPTS unset: TF decides by CPU)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import CALIBRATION, ROOT

ONEDNN_LOG = "oneDNN custom operations are on"
EPOCHS = 8  # 32 steps on the 100 shipped images: the fault shows within them.


def _machine_env():
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TF logs whether oneDNN is on.
    return env


@pytest.fixture(scope="module")
def projection_model(tmp_path_factory):
    """A mini-Xception module at 64x64 gray input (Arriaga et al., arXiv:1710.07557): two valid 3x3 convs to
    60x60x8, then a separable branch beside a stride-2 1x1 projection shortcut, added."""
    import keras
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((64, 64, 1), name="image")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3, use_bias=False)(inp)))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3, use_bias=False)(x)))
    shortcut = layers.BatchNormalization()(layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False)(x))
    y = layers.ReLU()(layers.BatchNormalization()(layers.SeparableConv2D(16, 3, padding="same", use_bias=False)(x)))
    y = layers.MaxPooling2D(3, strides=2, padding="same")(y)
    x = layers.Add()([y, shortcut])
    out = layers.Dense(10, activation="softmax", name="probabilities")(layers.GlobalAveragePooling2D()(x))
    path = str(tmp_path_factory.mktemp("guard") / "projection.keras")
    keras.Model(inp, out).save(path)
    return path


def _prune(model, out, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prune.py"), f"--input={model}",
                           "--method=magnitude", f"--epochs={EPOCHS}", "--noprogress",
                           f"--train_images={CALIBRATION}", f"--output={out}", *extra],
                          capture_output=True, text=True, env=_machine_env(), cwd=ROOT, timeout=600)


def test_prune_fine_tunes_with_tf_kernels_by_default(projection_model, tmp_path):
    import keras
    out = tmp_path / "pruned.keras"
    proc = _prune(projection_model, out)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert ONEDNN_LOG not in proc.stderr  # TF started with oneDNN off.
    original = keras.saving.load_model(projection_model, safe_mode=True, compile=False)
    pruned = keras.saving.load_model(str(out), safe_mode=True, compile=False)
    assert [w.shape for w in pruned.get_weights()] == [w.shape for w in original.get_weights()]


def test_with_onednn_training_the_same_run_dies_on_this_cpu(projection_model, tmp_path):
    """What the default avoids.  Where this CPU's oneDNN does not fault, there is nothing to show: skipped."""
    out = tmp_path / "pruned.keras"
    proc = _prune(projection_model, out, "--onednn_training")
    assert ONEDNN_LOG in proc.stderr, proc.stderr[-1500:]  # The flag did turn oneDNN on.
    if proc.returncode == 0:
        pytest.skip("TF's oneDNN training kernels did not fault on this CPU")
    assert proc.returncode in (-11, -6), proc.stderr[-1500:]  # SIGSEGV, or SIGABRT from glibc's heap checks.
    assert not out.exists()


def test_the_python_api_in_a_fresh_process_trains_with_tf_kernels(projection_model, tmp_path):
    out = tmp_path / "pruned.keras"
    script = f"""
import tfcompress as tfc
from tfcompress.io.atomic import save_keras
from tfcompress.keras.kernels import onednn_enabled
result = tfc.prune({projection_model!r}, method="magnitude", train_images={CALIBRATION!r},
                   options=tfc.TrainOptions(epochs={EPOCHS}, progress=False))
save_keras(result.model, {str(out)!r})
print("onednn", onednn_enabled())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_machine_env(),
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "onednn False" in proc.stdout and out.exists()


def test_training_with_onednn_on_by_tf_default_warns_once(monkeypatch):
    import io
    from tfcompress.keras import kernels
    monkeypatch.setattr(kernels, "_warned", [])
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert kernels.warn_if_onednn_training(out=io.StringIO()) is None  # Asked for: no warning.
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    buf = io.StringIO()
    warning = kernels.warn_if_onednn_training(out=buf)
    if kernels.onednn_enabled():
        assert warning.startswith("warning: ") and buf.getvalue() == warning + "\n"
        assert kernels.warn_if_onednn_training(out=buf) is None  # Once per process.
    else:
        assert warning is None and buf.getvalue() == ""


def test_the_api_chooses_only_before_tensorflow_starts_and_only_if_the_user_did_not(monkeypatch):
    import tensorflow  # noqa: F401
    from tfcompress.keras.kernels import prefer_tf_kernels
    assert not prefer_tf_kernels({})  # Too late: TF read its setting when it was imported.
    monkeypatch.delitem(sys.modules, "tensorflow")
    fresh = {}
    assert prefer_tf_kernels(fresh) and fresh == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    chosen = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert not prefer_tf_kernels(chosen) and chosen == {"TF_ENABLE_ONEDNN_OPTS": "1"}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
