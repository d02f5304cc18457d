"""tfcompress: TensorFlow/TFLite model compression.

Data flow: io (load, freeze) -> graph (rewrite) -> calibrate (ranges, cache)
-> quantize (eightbit graph) -> io (write) -> evaluate (report).
"""

__version__ = "0.1.0"
