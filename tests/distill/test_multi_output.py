"""Models with several outputs, or outputs that are not class vectors, train and report through every Keras-side
command: class heads by distillation on probabilities, other heads by mean squared error to the teacher's."""

import sys

import numpy as np
import pytest

from tests.conftest import zeroed_reference
from tfcompress.errors import TfcError
from tfcompress.evaluate.zoo import ZOO

BOXES = ZOO["boxes_digits"]
MIN_CLASS_AGREEMENT = 0.97
# Float32 rounding of two runs whose losses differ only by a factor applied and divided out.
UNITS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def boxes():
    """(the zoo's class + box model, its 100 calibration canvases as float NHWC, 150 held-out ones)."""
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    model = keras.saving.load_model(BOXES.path, safe_mode=True, compile=False)
    prep = Preprocessing.for_input(model.input_shape, mean=0.0, std=255.0)
    train = np.concatenate(list(iter_batches(list_images(BOXES.calibration), prep)))
    held = np.concatenate(list(iter_batches(list_images(BOXES.heldout)[:150], prep)))
    return model, train, held


def test_heads_are_found_by_rank_and_softmax(boxes):
    import keras
    from tfcompress.keras.heads import class_head, heads
    model, _, _ = boxes
    found = heads(model)
    assert [(h.name, h.kind, h.width, h.probabilities) for h in found] == [("class", "class", 10, True),
                                                                            ("box", "values", 4, False)]
    assert class_head(model).index == 0
    single = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])  # logits: still a class head
    assert heads(single)[0].kind == "class" and not heads(single)[0].probabilities
    dense_map = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, padding="same")])
    assert heads(dense_map)[0].kind == "values" and class_head(dense_map) is None


def test_fine_tuning_trains_the_box_head_and_keeps_the_class_head(boxes):
    """Magnitude pruning at 30%, distilled over both heads on 100 unlabelled canvases: the box error falls to
    under half the pruned model's before fine-tuning, and the class head agrees with the original again."""
    import keras
    from tfcompress.keras.heads import predict_all
    from tfcompress.keras.train import TrainConfig
    from tfcompress.prune import magnitude
    model, train, held = boxes
    reference = predict_all(model, held)
    wrapped = magnitude.prune_low_magnitude(model, magnitude.ConstantSparsity(0.3, frequency=1))
    for layer in wrapped.layers:
        if isinstance(layer, magnitude.PruneLowMagnitude):
            layer.update_mask(0.3)
    untuned = predict_all(magnitude.strip_pruning(wrapped), held)
    config = TrainConfig(epochs=8, verbose=0, seed=0)
    tuned_model = magnitude.prune_and_train(model, magnitude.ConstantSparsity(0.3, frequency=1), train, None,
                                            config, teacher=model)
    tuned = predict_all(tuned_model, held)
    box_before = np.mean(np.abs(untuned[1] - reference[1]))
    box_after = np.mean(np.abs(tuned[1] - reference[1]))
    assert box_after < 0.5 * box_before, (box_before, box_after)
    agreement = np.mean(tuned[0].argmax(1) == reference[0].argmax(1))
    assert agreement >= MIN_CLASS_AGREEMENT, agreement
    assert keras.ops.convert_to_numpy(tuned_model.get_layer("box").kernel).size > 0


def test_every_keras_command_runs_on_two_heads():
    """Each job on the two-head model, one epoch: it returns a model with the same two outputs."""
    import tfcompress as tfc
    quick = tfc.TrainOptions(epochs=1)
    train = BOXES.calibration
    jobs = {
        "magnitude": lambda: tfc.prune(BOXES.path, method="magnitude", sparsity=0.5, train_images=train,
                                       options=quick),
        "l1": lambda: tfc.prune(BOXES.path, method="l1", ratio=0.5, layer_epochs=0, train_images=train,
                                options=quick),
        "thinet": lambda: tfc.prune(BOXES.path, method="thinet", ratio=0.5, layer_epochs=0, train_images=train,
                                    options=quick),
        "cluster": lambda: tfc.cluster(BOXES.path, clusters=16, train_images=train, options=quick),
        "lowrank": lambda: tfc.lowrank(BOXES.path, energy=0.9, train_images=train, options=quick),
        "qat": lambda: tfc.qat(BOXES.path, train_images=train, options=quick),
        "binarize": lambda: tfc.binarize(BOXES.path, mode="bwn", train_images=train, options=quick),
        "distill": lambda: tfc.distill(BOXES.path, BOXES.path, train_images=train, options=quick),
    }
    for name, job in jobs.items():
        result = job()
        assert [tuple(o.shape[1:]) for o in result.model.outputs] == [(10,), (4,)], name


def test_thinet_thins_a_layer_feeding_both_heads(boxes):
    """dense_7 feeds the class and the box head.  ThiNet picks one channel set for both and rescales each head
    by its own least squares: the thinned model equals the original with each head's removed rows zeroed and
    kept rows scaled, and it stays closer to the original than a random channel choice does."""
    from tfcompress.keras.heads import predict_all
    from tfcompress.prune import filters, thinning
    model, train, held = boxes
    target = next(p for p in thinning.plan(model) if p.name == "dense_7")
    assert sorted(target.consumers) == ["box", "class"]
    kept, scales = filters.thinet_keep(model, target, 48, train, seed=0)
    assert len(kept) == 48 and set(scales) == {"box", "class"}
    thinned = thinning.thin(model, {"dense_7": kept}, scales)
    removed = np.setdiff1d(np.arange(96), kept)
    reference = zeroed_reference(model, {"class": removed, "box": removed}, scales)
    for got, want in zip(predict_all(thinned, held), predict_all(reference, held)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    original = predict_all(model, held)
    chosen = predict_all(thinned, held)
    rng = np.random.default_rng(0)
    random = predict_all(thinning.thin(model, {"dense_7": np.sort(rng.choice(96, 48, replace=False))}), held)
    assert np.mean(np.abs(chosen[1] - original[1])) < np.mean(np.abs(random[1] - original[1]))
    assert np.mean(chosen[0].argmax(1) == original[0].argmax(1)) >= np.mean(random[0].argmax(1) ==
                                                                          original[0].argmax(1))


def _scaled_box(model, scale: float):
    """`model` with its box output multiplied by `scale` (a Rescaling layer, no weights), the same weights."""
    import keras
    inputs = keras.Input(model.input_shape[1:])
    cls, box = model(inputs)
    return keras.Model(inputs, [cls, keras.layers.Rescaling(scale, name="units")(box)])


@pytest.mark.parametrize("function_matching", [False, True])
def test_a_value_heads_units_do_not_change_training(boxes, function_matching):
    """A box head in pixels (x 1000) instead of [0, 1], teacher and student alike: each head's loss weight
    follows the teacher's variance, so the student's loss is the same function of the same weights and
    training reaches the same weights, where an unweighted squared error would weigh the box 10^6 times
    more against the class head."""
    import keras
    from tfcompress.keras.heads import predict_all
    from tfcompress.keras.train import TrainConfig, fit
    model, train, held = boxes
    config = TrainConfig(epochs=2, verbose=0, seed=0, function_matching=function_matching)
    trained = []
    for scale in (1.0, 1000.0):
        teacher = _scaled_box(model, scale)
        student = keras.models.clone_model(model)
        student.set_weights([w * 0.9 for w in model.get_weights()])  # A student that differs from its teacher.
        fit(_scaled_box(student, scale), train[:64], None, config, teacher=teacher)
        trained.append(predict_all(student, held))
    untrained = predict_all(model, held)[1]
    assert np.mean(np.abs(trained[0][1] - untrained)) > 100 * UNITS_TOLERANCE  # Training moved the box head.
    for a, b in zip(*trained):
        np.testing.assert_allclose(a, b, atol=UNITS_TOLERANCE)


def test_a_value_head_without_a_teacher_is_refused(boxes):
    from tfcompress.keras.train import TrainConfig, fit
    model, train, _ = boxes
    with pytest.raises(TfcError, match="output box is not a class vector: training it needs a teacher"):
        fit(model, train[:8], np.zeros(8, np.int64), TrainConfig(epochs=1, verbose=0))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
