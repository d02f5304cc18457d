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
flags.DEFINE_alias("input", "student")
_TEACHER = flags.DEFINE_string("teacher", None, "Teacher model (.keras or .h5).  Default: the shipped digits model.")
_FEATURES = flags.DEFINE_list("features", [], "Feature distillation pairs student_layer:teacher_layer (same H x W).")
_FEATURE_WEIGHT = flags.DEFINE_float("feature_weight", 1.0, "Weight of each feature MSE term.")


def main() -> None:
    import numpy as np
    from tfcompress.api.keras_jobs import distill
    from tfcompress.data.source import FolderSource
    from tfcompress.errors import TfcError
    if not _JOB["input"].value:
        raise TfcError("--student is required (the model to train)")
    if _JOB["distill_from"].value == "none":
        raise TfcError("distill always learns from --teacher; use --alpha=1 to weigh the labels alone")
    teacher_path = _TEACHER.value or common.DEFAULT_MODEL
    student_path, default_run, kwargs = common.keras_job(_JOB, extra_inputs=[teacher_path])
    del kwargs["distill_from"]
    result = distill(student_path, teacher_path, features=_FEATURES.value, feature_weight=_FEATURE_WEIGHT.value,
                     **kwargs)
    teacher = result.details
    print(f"\ndistill: {teacher_path} -> {student_path} -> {_JOB['output'].value} ({result.summary})")
    rows = result.rows
    eval_dir = _JOB["eval_images"].value or (common.DEFAULT_EVAL if default_run else None)
    if eval_dir:
        images = FolderSource(eval_dir)
        xe = images.array(result.prep)
        preds = {name: m.predict(xe, verbose=0).argmax(1)
                 for name, m in (("teacher", teacher), ("before", result.original), ("after", result.model))}
        rows[0] += ["top-1 agreement with teacher"] + (["accuracy"] if images.labelled else [])
        for row, name in ((rows[1], "teacher"), (rows[2], "after")):
            row.append(f"{np.mean(preds[name] == preds['teacher']):.2%}")
            if images.labelled:
                row.append(f"{np.mean(preds[name] == images.labels):.2%}")
        if images.labelled:
            print(f"student accuracy on {len(xe)} images: {np.mean(preds['before'] == images.labels):.2%} before, "
                  f"{np.mean(preds['after'] == images.labels):.2%} after")
    common.print_table(rows)
    common.save_output(result.model, _JOB)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
