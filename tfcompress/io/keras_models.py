"""Keras model copies: the one way the Keras-side transforms duplicate a model."""


def copy_model(model):
    """A functional or sequential model rebuilt from its config with the same weights.

    The copy has its own layers and variables (training it leaves `model`
    alone) and is never compiled, so no optimizer state or loss rides along.
    """
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy
