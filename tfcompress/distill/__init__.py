"""Teacher-student distillation (Hinton et al.): the loss and the trainer live in `tfcompress.keras.train`."""

from tfcompress.callable_package import make_callable

make_callable(__name__, "tfcompress.api.keras_jobs", "distill")
