"""The tf_keras path: a Keras 2 .h5 model is magnitude-pruned by tensorflow-model-optimization's wrappers.

The .h5 is written here by tf_keras itself, in a subprocess (tf_keras and
Keras 3 are not mixed in the test process).  tfmot must stay out of every
other code path, since importing it switches the process to tf_keras.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import HELDOUT, ROOT

TARGET_SPARSITY = 0.5
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

MAKE_TF_KERAS_MODEL = textwrap.dedent("""
    import sys
    import numpy as np
    import tf_keras
    from tfcompress.evaluate.zoo import digits_training_set
    tf_keras.utils.set_random_seed(0)
    x, y = digits_training_set(600)
    L = tf_keras.layers
    inp = tf_keras.Input((32, 32, 3))
    h = L.MaxPooling2D(2)(L.Conv2D(8, 3, activation="relu")(inp))
    h = L.MaxPooling2D(2)(L.Conv2D(16, 3, activation="relu")(h))
    out = L.Dense(10, activation="softmax")(L.Flatten()(h))
    model = tf_keras.Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    model.save(sys.argv[1])
""")


# Every layer kind of the zoo (separable and depthwise convs, PReLU, LeakyReLU, ReLU6, swish, an SE Multiply,
# Reshape, Permute, Concatenate, Flatten) and two heads, written by tf_keras with its outputs on fixed inputs.
MAKE_BROAD_MODEL = textwrap.dedent("""
    import sys
    import numpy as np
    import tf_keras
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((32, 32, 3))
    h = L.ReLU(max_value=6.0)(L.BatchNormalization()(L.Conv2D(8, 3, strides=2)(L.ZeroPadding2D(1)(inp))))
    d = L.PReLU(shared_axes=[1, 2])(L.DepthwiseConv2D(3, padding="same")(h))
    h = L.Add()([h, L.LeakyReLU(0.1)(L.SeparableConv2D(8, 3, padding="same")(d))])
    g = L.Reshape((1, 1, 8))(L.Dense(8, activation="swish")(L.GlobalAveragePooling2D()(h)))
    h = L.Multiply()([h, g])
    h = L.Concatenate()([h, L.MaxPooling2D(1)(h)])
    h = L.Flatten()(L.Dropout(0.1)(L.Permute((2, 1, 3))(h)))
    model = tf_keras.Model(inp, [L.Dense(10, activation="softmax", name="class")(h), L.Dense(2, name="box")(h)])
    model.save(sys.argv[1])
    x = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype(np.float32)
    np.savez(sys.argv[2], x=x, **{f"out{i}": o for i, o in enumerate(model.predict(x, verbose=0))})
""")


@pytest.fixture(scope="module")
def broad_h5(tmp_path_factory):
    root = tmp_path_factory.mktemp("broad")
    path, outputs = str(root / "broad.h5"), str(root / "outputs.npz")
    proc = subprocess.run([sys.executable, "-c", MAKE_BROAD_MODEL, path, outputs], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path, outputs


@pytest.fixture(scope="module")
def tf_keras_h5(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfk") / "small_cnn.h5")
    proc = subprocess.run([sys.executable, "-c", MAKE_TF_KERAS_MODEL, path], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def test_the_h5_is_a_tf_keras_model(tf_keras_h5):
    from tfcompress.io.keras_models import h5_keras_version, is_tf_keras_h5
    assert h5_keras_version(tf_keras_h5).startswith("2.")
    assert is_tf_keras_h5(tf_keras_h5)
    assert not is_tf_keras_h5(os.path.join(ROOT, "testdata", "models", "digits_resnet.h5"))  # Written by Keras 3.


@pytest.mark.parametrize("training", [[], ["--function_matching"]], ids=["images", "function_matching"])
def test_tfmot_prunes_the_tf_keras_model(tf_keras_h5, tmp_path, training):
    import keras
    from tfcompress.prune.magnitude import sparsity_of
    out = tmp_path / "pruned.keras"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prune.py"), "--noprogress",
                           f"--input={tf_keras_h5}", f"--output={out}", f"--sparsity={TARGET_SPARSITY}",
                           "--schedule=constant", "--epochs=4", f"--eval_images={HELDOUT}", *training],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tensorflow-model-optimization" in proc.stdout
    assert ("function matching" in proc.stdout) == bool(training), proc.stdout
    # The output is a Keras 3 .keras file with plain layers holding exact zeros.
    model = keras.saving.load_model(out, safe_mode=True, compile=False)
    assert not any("prune_low_magnitude" in layer.name for layer in model.layers)
    sparsity = sparsity_of(model)
    assert set(sparsity) == {"conv2d", "conv2d_1", "dense"}
    for name, (zeros, total) in sparsity.items():
        assert zeros / total >= TARGET_SPARSITY - 0.01, (name, zeros, total)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("top-1 agreement"))
    agreement, accuracy = (float(v.split("%")[0]) for v in (line.split(":")[1], line.split("->")[1]))
    assert agreement >= 90.0, line
    # Four epochs are few for function matching (half of each batch is views, the learning rate decays to 0):
    # its run is held to the agreement it distils for (93.33% measured; accuracy 89.33%).
    assert accuracy >= 90.0 or training, line


def test_every_zoo_layer_kind_loads_from_tf_keras_into_keras3(broad_h5):
    """tf_keras writes `groups` and `kernel_*` keys into depthwise and separable convs that Keras 3 refuses; the
    loader drops them, and the Keras 3 model gives tf_keras's own outputs."""
    from tests.conftest import FLOAT_ATOL, FLOAT_RTOL
    from tfcompress.io.keras_models import load_keras
    path, outputs = broad_h5
    reference = np.load(outputs)
    model = load_keras(path)
    got = model.predict(reference["x"], verbose=0)
    for i, out in enumerate(got):
        np.testing.assert_allclose(out, reference[f"out{i}"], rtol=FLOAT_RTOL, atol=FLOAT_ATOL)


def test_tfmot_prunes_a_two_head_separable_model(broad_h5, tmp_path):
    """Through tfmot and back to Keras 3: both heads kept, the separable conv's pointwise kernel pruned (tfmot's
    registry prunes no depthwise kernel, and the report says so layer by layer)."""
    import keras
    from tfcompress.prune.magnitude import sparsity_of
    path, _ = broad_h5
    out = tmp_path / "pruned.keras"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prune.py"), "--noprogress",
                           f"--input={path}", f"--output={out}", f"--sparsity={TARGET_SPARSITY}",
                           "--schedule=constant", "--epochs=1"], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tensorflow-model-optimization" in proc.stdout
    model = keras.saving.load_model(out, safe_mode=True, compile=False)
    assert [tuple(o.shape[1:]) for o in model.outputs] == [(10,), (2,)]
    pointwise = keras.ops.convert_to_numpy(model.get_layer("separable_conv2d").pointwise_kernel)
    assert np.mean(pointwise == 0) >= TARGET_SPARSITY - 0.01
    assert np.all(keras.ops.convert_to_numpy(model.get_layer("depthwise_conv2d").kernel) != 0)
    row = next(l for l in proc.stdout.splitlines() if l.startswith("depthwise_conv2d "))
    assert row.split()[-1] == "0.0%", row
    assert set(sparsity_of(model)) >= {"conv2d", "separable_conv2d", "class", "box"}


def test_a_missing_tfmot_is_one_error_line_naming_the_install_step(tf_keras_h5, tmp_path):
    """Without tensorflow-model-optimization (a module that fails to import stands in for it), pruning a tf_keras
    model says what to install, in one line, and writes nothing."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "tensorflow_model_optimization.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow_model_optimization'\", "
        "name='tensorflow_model_optimization')\n")
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(shadow), ROOT]))
    out = tmp_path / "pruned.keras"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prune.py"), "--noprogress",
                           f"--input={tf_keras_h5}", f"--output={out}", "--epochs=1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tf_keras_h5} is a tf_keras (Keras 2) model") and \
        "tensorflow_model_optimization is not installed; install it with `pip install --no-deps -r " \
        "requirements-tf-keras.lock`" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_tfmot_is_imported_only_on_the_tf_keras_path():
    code = ("import os, sys\n"
            "import tfcompress.prune.magnitude, tfcompress.prune.filters, tfcompress.prune.blocks\n"
            "import tfcompress.keras.train, tfcompress.lowrank.svd, tfcompress.prune.sensitivity\n"
            "assert 'tensorflow_model_optimization' not in sys.modules\n"
            "assert os.environ.get('TF_USE_LEGACY_KERAS') in (None, '0')\n"
            "import tfcompress.prune.tfmot_prune\n"
            "assert 'tensorflow_model_optimization' not in sys.modules  # Not even on import of the module.\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_lambda_layers_in_h5_are_refused(tmp_path):
    code = textwrap.dedent("""
        import sys
        import tf_keras
        inp = tf_keras.Input((4,))
        out = tf_keras.layers.Dense(2)(tf_keras.layers.Lambda(lambda t: t * 2)(inp))
        tf_keras.Model(inp, out).save(sys.argv[1])
    """)
    path = str(tmp_path / "lambda.h5")
    proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "x.keras"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prune.py"), "--noprogress",
                           f"--input={path}", f"--output={out}"], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 1 and "Lambda layer" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists() and np.all([not p.name.startswith(".x.keras") for p in tmp_path.iterdir()])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
