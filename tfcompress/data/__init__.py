"""The data layer: every input source (image folders, labelled folders, arrays) and its preprocessing.

- `images`: decoding one image file into the model's H×W×C, normalized;
- `folders`: labelled and unlabelled folders, labels files;
- `source`: `ImageSource`, one interface over folders, pixel arrays and tf.data datasets.
"""
