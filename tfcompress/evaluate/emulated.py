"""The same .tflite on aarch64, under user-mode emulation, and on this machine: output differences in steps.

The project exists for ARM phones, and LiteRT's aarch64 build runs other
kernels (XNNPACK's NEON and dot-product paths, ruy's ARM paths) than the x86
build (AVX2, AVX-512 VNNI).  `compare` runs one flatbuffer on the same input
tensors in both: here, with this process's LiteRT, and in an aarch64 Python
3.11 (Debian's arm64 packages) with LiteRT's aarch64 wheel, executed by
qemu-user's qemu-aarch64, 8.2 or newer (`tools/setup_arm64.sh` makes it in
`.arm64/`; qemu 7.2 crashes in LiteRT's interpreter setup).  Both run
`evaluate.raw_litert`, so only the machine differs.

An integer output's difference is counted in its own quantization steps; a
float output's step is its x86 span / 255, the step an 8-bit tensor with that
range would have (as in `evaluate.parity`).  Both builds implement TFLite's
integer arithmetic, so more than one step is a kernel difference, not
rounding.
"""

import dataclasses
import os
import subprocess
import sys
import tempfile
from typing import List, Optional

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.evaluate import raw_litert

# Where tools/setup_arm64.sh puts it: the checkout's .arm64/, found beside the package or beside the
# virtualenv (.venv sits in the checkout; under Bazel the package is a runfiles copy).
ARM_HOMES = (os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".arm64"),
             os.path.join(os.path.dirname(os.path.abspath(sys.prefix)), ".arm64"))
QEMU = "qemu-aarch64"
ONE_STEP = 1.0 + 1e-4  # exactly one step, computed in float, may land a hair above 1
TIMEOUT_SECONDS = 1800


@dataclasses.dataclass(frozen=True)
class ArmPython:
    """An emulated aarch64 Python: its root file system and the folder holding its LiteRT wheel."""
    root: str
    site: str

    def command(self, *args: str) -> List[str]:
        return [QEMU, "-L", self.root, os.path.join(self.root, "usr", "bin", "python3.11"), *args]


def find_arm_python(home: Optional[str] = None) -> ArmPython:
    """The emulated Python in `home` (default: $TFC_ARM64_HOME, else `.arm64/` of this checkout).

    Raises:
      TfcError: qemu-user-static or the aarch64 Python is missing, saying how to make them.
    """
    home = home or os.environ.get("TFC_ARM64_HOME") or next((h for h in ARM_HOMES if os.path.isdir(h)),
                                                            ARM_HOMES[0])
    arm = ArmPython(root=os.path.join(home, "root"), site=os.path.join(home, "site"))
    if not any(os.access(os.path.join(d, QEMU), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)):
        raise TfcError(f"{QEMU} not found (Debian's qemu-user; tools/setup_arm64.sh installs it)")
    if not os.path.isfile(os.path.join(arm.root, "usr", "bin", "python3.11")) or \
            not os.path.isdir(os.path.join(arm.site, "ai_edge_litert")):
        raise TfcError(f"no emulated aarch64 Python with LiteRT in {home} (run tools/setup_arm64.sh)")
    return arm


@dataclasses.dataclass(frozen=True)
class OutputDiff:
    """One output: its name and type, and the aarch64-vs-x86 difference in steps over all images."""
    index: int
    name: str
    dtype: str
    max_steps: float
    mean_steps: float
    differing: float  # fraction of values that differ at all

    @property
    def ok(self) -> bool:
        return self.max_steps <= ONE_STEP


def input_tensors(interpreter_inputs, images: np.ndarray):
    """The raw input tensor for a float NHWC batch: as is, or quantized with the input's scale and zero point."""
    detail = interpreter_inputs[0]
    if detail["dtype"] in (np.float32, np.float16):
        return {"input_0": images.astype(detail["dtype"])}
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return {"input_0": np.clip(np.round(images / scale) + zero, info.min, info.max).astype(detail["dtype"])}


def compare(model_path: str, images: np.ndarray, arm: Optional[ArmPython] = None, threads: int = 1
            ) -> List[OutputDiff]:
    """Runs `model_path` on `images` (float NHWC, normalized) here and under emulation; one row per output.

    Raises:
      TfcError: no emulator, a model LiteRT refuses, or the emulated run failing.
    """
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    arm = arm or find_arm_python()
    try:
        interpreter = Interpreter(model_path=model_path)
    except (ValueError, RuntimeError) as e:
        raise TfcError(f"LiteRT cannot load {model_path}: {str(e).strip().splitlines()[0][:200]}") from e
    if len(interpreter.get_input_details()) != 1:
        raise TfcError(f"{model_path}: the ARM comparison feeds one image input, the model has "
                       f"{len(interpreter.get_input_details())}")
    feeds = input_tensors(interpreter.get_input_details(), images)
    outputs = interpreter.get_output_details()
    here = raw_litert.raw_outputs(model_path, feeds, threads)
    with tempfile.TemporaryDirectory() as work:
        np.savez(os.path.join(work, "in.npz"), **feeds)
        env = {"PATH": os.environ.get("PATH", "/usr/bin"), "PYTHONPATH": arm.site, "PYTHONNOUSERSITE": "1"}
        try:
            done = subprocess.run(arm.command(raw_litert.__file__, os.path.abspath(model_path),
                                              os.path.join(work, "in.npz"), os.path.join(work, "out.npz"),
                                              str(threads)),
                                  capture_output=True, text=True, timeout=TIMEOUT_SECONDS, env=env, check=False)
        except subprocess.TimeoutExpired as e:
            raise TfcError(f"the emulated aarch64 run of {model_path} took over {TIMEOUT_SECONDS} s") from e
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no message"])[-1][:200]
            raise TfcError(f"the emulated aarch64 run of {model_path} failed (exit {done.returncode}): {tail}")
        with np.load(os.path.join(work, "out.npz")) as data:
            there = {k: data[k] for k in data.files}
    rows = []
    for j, detail in enumerate(outputs):
        a, b = here[f"output_{j}"], there[f"output_{j}"]
        if a.shape != b.shape:
            raise TfcError(f"{model_path}: output {j} has shape {b.shape} on aarch64 and {a.shape} here")
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        if np.issubdtype(a.dtype, np.floating):
            span = float(np.max(a) - np.min(a))
            diff = diff / (span / 255.0 if span > 0 else 1.0)
        rows.append(OutputDiff(index=j, name=detail["name"], dtype=np.dtype(detail["dtype"]).name,
                               max_steps=float(diff.max()), mean_steps=float(diff.mean()),
                               differing=float(np.mean(diff > 0))))
    return rows
