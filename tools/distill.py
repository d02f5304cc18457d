"""distill: trains a student model from a teacher (Hinton's soft targets, optionally feature distillation).

    python tools/distill.py --teacher=big.keras --student=small.keras --output=small_distilled.keras \
        --temperature=4 --alpha=0.5 --epochs=20 --train_images=data/train \
        --features=conv2d_1:conv2d_3 --feature_weight=1.0

Loss: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher || student at T)
(Hinton et al., arXiv:1503.02531).  With an unlabelled --train_images
folder the teacher's soft targets are the only labels (label-free mode).
--features adds an MSE between each student:teacher layer pair (FitNets),
through a 1x1 adapter when their widths differ; the adapters are dropped
after training.  --alpha=1 trains on the labels alone (the baseline that
distillation is measured against).  With no --teacher the shipped digits
model teaches.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_JOB = common.define_training_flags(epochs=20, model_flag="student")
_TEACHER = flags.DEFINE_string("teacher", None, "Teacher model (.keras or .h5).  Default: the shipped digits model.")
_FEATURES = flags.DEFINE_list("features", [], "Feature distillation pairs student_layer:teacher_layer (same H x W).")
_FEATURE_WEIGHT = flags.DEFINE_float("feature_weight", 1.0, "Weight of each feature MSE term.")


def _pairs():
    from tfcompress.keras.train import FeaturePair
    from tfcompress.errors import TfcError
    pairs = []
    for item in _FEATURES.value:
        student, sep, teacher = item.partition(":")
        if not sep or not student or not teacher:
            raise TfcError(f"--features entry {item!r} is not student_layer:teacher_layer")
        pairs.append(FeaturePair(student, teacher))
    return pairs


def main() -> None:
    import numpy as np
    from tfcompress.data.folders import read_image_set
    from tfcompress.data.images import iter_batches
    from tfcompress.keras.train import fit
    from tfcompress.errors import TfcError
    from tfcompress.io.keras_models import copy_model, load_keras
    if not _JOB["input"].value:
        raise TfcError("--student is required (the model to train)")
    if _JOB["distill_from"].value == "none":
        raise TfcError("distill always learns from --teacher; use --alpha=1 to weigh the labels alone")
    teacher_path = _TEACHER.value or common.DEFAULT_MODEL
    pairs = _pairs()
    job = common.KerasJob(_JOB, extra_inputs=[teacher_path])
    teacher = load_keras(teacher_path)
    if tuple(teacher.input_shape[1:]) != tuple(job.original.input_shape[1:]):
        raise TfcError(f"teacher input {tuple(teacher.input_shape[1:])} differs from the student's "
                       f"{tuple(job.original.input_shape[1:])}")
    if teacher.output_shape[-1] != job.original.output_shape[-1]:
        raise TfcError(f"teacher outputs {teacher.output_shape[-1]} classes, the student "
                       f"{job.original.output_shape[-1]}")
    student = copy_model(job.original)
    fit(student, job.x, job.labels, job.config, teacher=teacher, features=pairs,
        feature_weight=_FEATURE_WEIGHT.value)
    how = "teacher's soft targets only (no labels)" if job.labels is None else f"labels and teacher, alpha {job.config.alpha:g}"
    print(f"\ndistill: {teacher_path} -> {job.input_path} -> {_JOB['output'].value} ({how}, T={job.config.temperature:g}, "
          f"{len(job.x)} images" + (f", features {', '.join(_FEATURES.value)}" if pairs else "") + ")")
    rows = [["model", "params"], ["teacher", teacher.count_params()], ["student", student.count_params()]]
    eval_dir = _JOB["eval_images"].value or (common.DEFAULT_EVAL if job.default_run else None)
    if eval_dir:
        images = read_image_set(eval_dir)
        xe = np.concatenate(list(iter_batches(images.paths, job.prep, 64)))
        preds = {name: m.predict(xe, verbose=0).argmax(1)
                 for name, m in (("teacher", teacher), ("before", job.original), ("after", student))}
        rows[0] += ["top-1 agreement with teacher"] + (["accuracy"] if images.labelled else [])
        for row, name in ((rows[1], "teacher"), (rows[2], "after")):
            row.append(f"{np.mean(preds[name] == preds['teacher']):.2%}")
            if images.labelled:
                row.append(f"{np.mean(preds[name] == images.labels):.2%}")
        if images.labelled:
            print(f"student accuracy on {len(xe)} images: {np.mean(preds['before'] == images.labels):.2%} before, "
                  f"{np.mean(preds['after'] == images.labels):.2%} after")
    common.print_table(rows)
    from tfcompress.io.atomic import save_keras
    save_keras(student, _JOB["output"].value, overwrite=_JOB["overwrite"].value)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
