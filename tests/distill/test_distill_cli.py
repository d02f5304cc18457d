"""`tfcompress distill` end to end: a distilled student beats the same student trained on labels alone."""

import os

import numpy as np
import pytest

from tests.conftest import HELDOUT, KERAS_MODEL, error_lines, run_tool, write_digits

TRAIN_IMAGES = 200  # Few labels: where a teacher's soft targets help most.
EPOCHS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(labelled folder of 200 unshipped digits, an unlabelled copy, an untrained small student .keras)."""
    import keras
    from tfcompress.evaluate.zoo import digits_training_set
    from tfcompress.io.atomic import save_keras
    root = tmp_path_factory.mktemp("distill")
    x, y = digits_training_set(TRAIN_IMAGES)
    labelled = write_digits(root / "labelled", x, y)
    flat = root / "flat"
    flat.mkdir()
    for label in os.listdir(labelled):
        for name in os.listdir(os.path.join(labelled, label)):
            os.link(os.path.join(labelled, label, name), flat / f"{label}_{name}")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    student = keras.Sequential([
        keras.Input((32, 32, 3)), layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        layers.MaxPooling2D(2), layers.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(10, activation="softmax", name="out")], name="student")
    path = str(root / "student.keras")
    save_keras(student, path)
    return labelled, str(flat), path


def _accuracy(path):
    import keras
    from tfcompress.data.folders import read_image_set
    from tfcompress.data.images import Preprocessing, iter_batches
    held = read_image_set(HELDOUT)
    x = np.concatenate(list(iter_batches(held.paths, Preprocessing(height=32, width=32, channels=3), 100)))
    model = keras.saving.load_model(path, safe_mode=True)
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == held.labels)), model, x


def _distill(student, out, images, *extra):
    proc = run_tool("distill", f"--teacher={KERAS_MODEL}", f"--student={student}", f"--output={out}",
                    f"--train_images={images}", f"--epochs={EPOCHS}", f"--eval_images={HELDOUT}", "--noprogress",
                    *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_distilled_student_beats_labels_alone(setup, tmp_path):
    labelled, _, student = setup
    _distill(student, tmp_path / "labels.keras", labelled, "--alpha=1")
    proc = _distill(student, tmp_path / "kd.keras", labelled, "--alpha=0.5", "--temperature=4")
    assert "labels and teacher, alpha 0.5" in proc.stdout
    labels_only, _, _ = _accuracy(tmp_path / "labels.keras")
    distilled, _, _ = _accuracy(tmp_path / "kd.keras")
    # Same student, same 200 images, same epochs and seed: the teacher's soft targets must add accuracy.
    assert distilled > labels_only + 0.01, (distilled, labels_only)


def test_label_free_and_feature_distillation(setup, tmp_path):
    _, flat, student = setup
    out = tmp_path / "free.keras"
    proc = _distill(student, out, flat, "--features=c2:re_lu_5", "--feature_weight=0.5")
    assert "soft targets only (no labels)" in proc.stdout and "features c2:re_lu_5" in proc.stdout
    accuracy, model, x = _accuracy(out)
    assert accuracy > 0.85  # Learned from the teacher alone: no label was read.
    # The 16 -> 32 channel adapter trained with the student is not part of the saved model.
    # (Compared with the student as saved: Keras numbers unnamed layers per process.)
    from tfcompress.io.keras_models import load_keras
    assert [l.name for l in model.layers] == [l.name for l in load_keras(student).layers]
    assert [type(l).__name__ for l in model.layers] == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
                                                        "Flatten", "Dense"]
    assert model.predict(x[:4], verbose=0).shape == (4, 10)


def test_function_matching_reaches_the_trainer(setup, tmp_path):
    """--function_matching trains on views (the trainer path is tested in test_views.py) and says so."""
    _, flat, student = setup
    proc = run_tool("distill", f"--teacher={KERAS_MODEL}", f"--student={student}", f"--output={tmp_path / 'fm.keras'}",
                    f"--train_images={flat}", "--epochs=1", "--noprogress", "--function_matching")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "soft targets only (no labels), function matching on shifted, mixed views" in proc.stdout, proc.stdout


@pytest.mark.parametrize("features, message", [
    ("c2:dense", "spatial shapes differ"),
    ("nope:re_lu_5", "feature pair nope:re_lu_5"),
])
def test_bad_feature_pairs(setup, features, message):
    from tfcompress.keras.train import FeaturePair, TrainConfig, fit
    from tfcompress.errors import TfcError
    from tfcompress.io.keras_models import load_keras
    _, _, student = setup
    student_layer, teacher_layer = features.split(":")
    x = np.zeros((4, 32, 32, 3), np.float32)
    with pytest.raises(TfcError, match=message):
        fit(load_keras(student), x, None, TrainConfig(epochs=1, verbose=0), teacher=load_keras(KERAS_MODEL),
            features=[FeaturePair(student_layer, teacher_layer)])


@pytest.mark.parametrize("args, message", [
    (["--features=c2"], "is not student_layer:teacher_layer"),
    (["--distill_from=none"], "distill always learns from --teacher"),
])
def test_bad_distill_input(setup, tmp_path, args, message):
    labelled, _, student = setup
    out = tmp_path / "out.keras"
    proc = run_tool("distill", f"--student={student}", f"--output={out}", f"--train_images={labelled}", "--epochs=1",
                    "--noprogress", *args)
    assert proc.returncode == 1 and len(error_lines(proc)) == 1 and message in error_lines(proc)[0], proc.stderr[-2000:]
    assert not out.exists()


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
