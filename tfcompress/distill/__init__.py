"""Teacher-student distillation (Hinton et al.): the loss and the trainer live in `tfcompress.keras.train`."""
