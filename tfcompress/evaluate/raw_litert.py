"""Runs a .tflite on given raw input tensors and returns every output raw (no dequantization).

It imports only numpy and LiteRT, so the same code runs here and in the
emulated aarch64 Python (`evaluate.emulated`), where it is started as a
script: `python raw_litert.py MODEL INPUTS.npz OUTPUTS.npz THREADS`.  Inputs
are arrays "input_<i>" of shape [N, ...] (one model input each); outputs are
"output_<j>" of shape [N, ...] in the model's output order.
"""

import sys
from typing import Dict

import numpy as np


def raw_outputs(model_path: str, inputs: Dict[str, np.ndarray], threads: int = 1) -> Dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    interpreter = Interpreter(model_path=model_path, num_threads=threads)
    interpreter.allocate_tensors()
    in_details, out_details = interpreter.get_input_details(), interpreter.get_output_details()
    count = len(inputs["input_0"])
    results = {f"output_{j}": [] for j in range(len(out_details))}
    for n in range(count):
        for i, detail in enumerate(in_details):
            interpreter.set_tensor(detail["index"], inputs[f"input_{i}"][n:n + 1].astype(detail["dtype"]))
        interpreter.invoke()
        for j, detail in enumerate(out_details):
            results[f"output_{j}"].append(np.array(interpreter.get_tensor(detail["index"])))
    return {k: np.concatenate(v) for k, v in results.items()}


if __name__ == "__main__":
    model, inputs_path, outputs_path, threads = sys.argv[1:5]
    with np.load(inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    np.savez(outputs_path, **raw_outputs(model, feeds, int(threads)))
