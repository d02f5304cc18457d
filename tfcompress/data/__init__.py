"""The data layer: every input source (image folders, labelled folders, arrays) and its preprocessing.

- `images`: decoding one image file into the model's H×W×C, normalized;
- `folders`: labelled and unlabelled evaluation folders, labels files;
- `training`: training images as arrays.
"""
