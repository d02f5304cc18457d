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


def _run(*args):
    return subprocess.run([sys.executable, TOOL, "--noprogress", *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=600)


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


@pytest.mark.parametrize("args,message", [
    (["--method=thinet", "--ratio=1.5"], "--ratio must be in (0, 1)"),
    (["--method=l1", "--layers=conv2d_2"], "cannot thin conv2d_2"),
    (["--sparsity=1.0"], "--sparsity must be in [0, 1)"),
    (["--sparsity=-0.1"], "--sparsity must be in [0, 1)"),
    (["--distill_from=none", "--train_images={flat}"], "has no classes"),
    (["--sparsity_map=batch_normalization=0.5"], "cannot prune layer batch_normalization"),
    (["--input={h5}"], "this command takes a Keras 3 .keras model"),
    (["--m_by_n=4:2"], "need 0 < N < M"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "a.png")
    h5 = os.path.join(ROOT, "testdata", "models", "digits_resnet.h5")
    out = tmp_path / "out.keras"
    before = set(os.listdir(tmp_path))
    proc = _run(f"--output={out}", "--epochs=1", *[a.format(flat=flat, h5=h5) for a in args])
    assert proc.returncode == 1, proc.stderr[-1000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-1000:]
    assert set(os.listdir(tmp_path)) == before


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
