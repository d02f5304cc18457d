"""The Keras foundation every Keras-side method builds on.

- `graph`: the layer graph of a functional model, and rebuilding it layer by layer;
- `fold`: batch-norm folding into the conv or dense layer before it;
- `cost`: parameters and MACs;
- `train`: the one trainer (labels, a teacher's soft targets, features, shared weights) and BN re-estimation;
- `registry`: the one registry of tfcompress's serializable Keras objects, which every loader uses.
"""
