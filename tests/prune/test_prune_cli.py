"""`tfcompress prune` end to end: labelled training, exact zeros in the output, and bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import HELDOUT, ROOT
from tfcompress.evaluate.zoo import digits_training_set

TOOL = os.path.join(ROOT, "tools", "prune.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _run(*args, tool=None):
    path = os.path.join(ROOT, "tools", f"{tool}.py") if tool else TOOL
    return subprocess.run([sys.executable, path, "--noprogress", *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """.keras models with nothing to prune (no conv or dense) and with a layer thinning does not know."""
    import keras
    from tfcompress.io.atomic import save_keras
    root = tmp_path_factory.mktemp("odd")
    layers = keras.layers
    inp = keras.Input((32, 32, 3))
    none = keras.Model(inp, layers.Softmax()(layers.GlobalAveragePooling2D()(inp)))
    h = layers.LayerNormalization()(layers.Conv2D(4, 3)(inp))
    odd = keras.Model(inp, layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(h)))
    paths = {"no_prunable": str(root / "none.keras"), "odd_layer": str(root / "odd.keras")}
    save_keras(none, paths["no_prunable"])
    save_keras(odd, paths["odd_layer"])
    return paths


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """600 sklearn digits, none of them shipped in testdata, as DIR/<label>/*.png."""
    root = tmp_path_factory.mktemp("train")
    x, y = digits_training_set(600)
    for k, (img, label) in enumerate(zip(x, y)):
        os.makedirs(root / str(label), exist_ok=True)
        Image.fromarray((img[..., 0] * 255).round().astype(np.uint8)).save(root / str(label) / f"{k:04d}.png")
    return root


def test_prune_with_labels_writes_exact_zeros(labelled, tmp_path):
    import keras
    out = tmp_path / "pruned.keras"
    proc = _run(f"--output={out}", f"--train_images={labelled}", "--sparsity=0.6", "--epochs=2",
                "--m_by_n=", "--distill_from=none", f"--eval_images={HELDOUT}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "labels only" in proc.stdout and "total" in proc.stdout and "accuracy" in proc.stdout
    model = keras.saving.load_model(out, safe_mode=True)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            k = keras.ops.convert_to_numpy(layer.kernel)
            assert (k == 0).sum() >= int(round(0.6 * k.size)), layer.name


def test_filter_pruning_removes_channels(labelled, tmp_path):
    import keras
    out = tmp_path / "thin.keras"
    proc = _run(f"--output={out}", f"--train_images={labelled}", "--method=l2", "--ratio=0.5", "--epochs=1",
                "--layer_epochs=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distilled from the original and labels" in proc.stdout
    model = keras.saving.load_model(out, safe_mode=True)
    assert model.get_layer("conv2d_4").kernel.shape[-1] == 16 and model.get_layer("conv2d_5").kernel.shape[-2] == 16
    macs_line = next(l for l in proc.stdout.splitlines() if l.startswith("ratio"))
    assert float(macs_line.split()[2]) < 0.6


def test_sensitivity_allocation_removes_the_ratio_of_the_macs(labelled, tmp_path):
    """--ratio=0.4 with sensitivity allocation: the model's MACs (counted here on the saved model) fall to at
    most 0.6x, give or take whole channels, and the groups lose different shares."""
    import keras
    from tests.conftest import KERAS_MODEL, MACS_ROUNDING
    from tfcompress.keras.cost import count
    out = tmp_path / "thin.keras"
    proc = _run(f"--output={out}", f"--train_images={labelled}", "--method=thinet", "--ratio=0.4", "--epochs=1",
                "--layer_epochs=0", "--allocation=sensitivity")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0.4 of the MACs spread over the groups by measured sensitivity" in proc.stdout
    original = keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)
    thin = keras.saving.load_model(out, safe_mode=True, compile=False)
    assert count(thin)[1] <= (0.6 + MACS_ROUNDING) * count(original)[1]
    shares = {round(thin.get_layer(l.name).kernel.shape[-1] / l.kernel.shape[-1], 2)
              for l in original.layers if isinstance(l, keras.layers.Conv2D)}
    assert len(shares) > 1, shares


@pytest.mark.parametrize("args,message", [
    (["--method=thinet", "--ratio=1.5"], "--ratio must be in (0, 1)"),
    (["--method=thinet", "--allocation=sensitivity", "--ratio=0.9"], "beyond the largest per-group ratio"),
    (["--method=l1", "--layers=probabilities"], "cannot thin probabilities"),
    (["--method=l1", "--layers=conv2d_2", "--noresidual_groups"], "cannot thin conv2d_2"),
    (["--sparsity=1.0"], "--sparsity must be in [0, 1)"),
    (["--sparsity=-0.1"], "--sparsity must be in [0, 1)"),
    (["--distill_from=none", "--train_images={flat}"], "has no classes"),
    (["--sparsity_map=batch_normalization=0.5"], "cannot prune layer batch_normalization"),
    (["--input={pb}"], "this command takes a Keras model (.keras, or .h5)"),
    (["--m_by_n=4:2"], "need 0 < N < M"),
    (["--sparsity_map=probabilities=0.999"], "leaves layer probabilities (320 weights) empty"),
    (["--input={no_prunable}"], "no prunable layer"),
    (["--input={no_prunable}", "--method=l1"], "no prunable conv/dense layer"),
    (["--input={odd_layer}", "--method=l1"], "(LayerNormalization), which thinning does not track"),
    (["--tool=drop_blocks", "--drop_blocks=1", "--input={no_prunable}"], "no residual block"),
    (["--tool=drop_blocks", "--latency_target=1.5"], "--latency_target must be in (0, 1)"),
    (["--tool=drop_blocks"], "give exactly one of --drop_blocks"),
    (["--tool=drop_blocks", "--drop_blocks=3"], "only 2 droppable blocks"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, odd_models, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "a.png")
    pb = os.path.join(ROOT, "testdata", "models", "digits_resnet.pb")
    out = tmp_path / "out.keras"
    before = set(os.listdir(tmp_path))
    tool = next((a.split("=")[1] for a in args if a.startswith("--tool=")), None)
    args = [a.format(flat=flat, pb=pb, **odd_models) for a in args if not a.startswith("--tool=")]
    proc = _run(f"--output={out}", "--epochs=1", *args, tool=tool)
    assert proc.returncode == 1, proc.stderr[-1000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-1000:]
    assert set(os.listdir(tmp_path)) == before


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
