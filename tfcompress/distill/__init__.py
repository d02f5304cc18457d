"""Teacher-student training: Hinton distillation losses and the one trainer every training command uses."""
