"""Running a flatbuffer in the LiteRT interpreter on float NHWC batches.

Integer-input models get their float input quantized with the model's own
scale and zero point (`QuantizedIO.QUANTIZE`), or raw pixels
(`QuantizedIO.PIXELS`) when the model's input quantization is exactly the
pixel normalization; integer outputs are dequantized.  TFLite models have
batch 1, so a batch is run one image per invoke.
"""

import enum
import json
import os
import select
import signal
import struct
import subprocess
import sys
from typing import Dict, Iterable, Optional

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.export import flatbuffer as fb


class QuantizedIO(enum.Enum):
    """How a float image batch is fed to an integer-input TFLite model."""
    QUANTIZE = "quantize"  # q = round(x / scale) + zero_point, clipped: the model's own parameters.
    PIXELS = "pixels"      # The raw 0..255 pixel (minus 128 for int8): needs scale = 1/std, zero = mean.


class LiteRTRunner:
    """One interpreter for one flatbuffer.

    Args:
      flatbuffer: the model bytes.
      source: name for error messages.
      threads: interpreter threads.
      xnnpack: LiteRT's default delegate (XNNPACK); False runs only the
        builtin reference kernels (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`).
      quantized_io, mean, std: how float images are fed to an integer input.
    """

    def __init__(self, flatbuffer: bytes, *, source: str = "flatbuffer", threads: int = 1, xnnpack: bool = True,
                 quantized_io: QuantizedIO = QuantizedIO.QUANTIZE, mean: float = 0.0, std: float = 255.0):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # pylint: disable=import-outside-toplevel
        self.model = fb.parse(flatbuffer, source)
        self.source = source
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_content=flatbuffer, num_threads=threads,
                                           experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise TfcError(f"LiteRT cannot load {source}: {str(e).strip().splitlines()[0][:200]}") from e
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise TfcError(f"{source}: expected one NHWC image input, found {[tuple(i['shape']) for i in inputs]}")
        self.input = inputs[0]
        self.output = self.interpreter.get_output_details()[0]
        self.quantized_io, self.mean, self.std = quantized_io, mean, std
        if quantized_io is QuantizedIO.PIXELS and self.input["dtype"] in (np.int8, np.uint8):
            scale, zero = self.input["quantization"]
            shift = 128 if self.input["dtype"] == np.int8 else 0
            # Raw pixels are exact only if q = pixel - shift  <=>  scale = 1/std and zero = mean - shift.
            if not (np.isclose(scale, 1.0 / std, rtol=1e-3) and abs(zero - (mean - shift)) < 0.5):
                raise TfcError(f"--quantized_io=pixels needs the input quantization to equal the normalization "
                               f"(scale 1/std = {1.0 / std:.6g}, zero point {mean - shift:g}); "
                               f"{source} has scale {scale:.6g}, zero point {zero}")

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.input["shape"])

    def _feed(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype in (np.float32, np.float16):
            return x.astype(dtype)
        info = np.iinfo(dtype)
        if self.quantized_io is QuantizedIO.PIXELS:
            pixels = np.round(x * self.std + self.mean)
            return np.clip(pixels - (128 if dtype == np.int8 else 0), info.min, info.max).astype(dtype)
        scale, zero = self.input["quantization"]
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    @staticmethod
    def _dequantize(y: np.ndarray, detail) -> np.ndarray:
        scale, zero = detail["quantization"]
        if detail["dtype"] in (np.float32, np.float16) or not scale:
            return np.asarray(y, np.float32)
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def _invoke(self, x: np.ndarray) -> None:
        self.set_input(x)
        self.invoke()

    def set_input(self, x: np.ndarray) -> None:
        """Feeds one float image [H, W, C] (quantized as `quantized_io` says for an integer input)."""
        try:
            self.interpreter.set_tensor(self.input["index"], self._feed(x[None]))
        except (ValueError, RuntimeError) as e:
            raise TfcError(f"LiteRT cannot feed {self.source}: {str(e).strip().splitlines()[0][:200]}") from e

    def invoke(self) -> None:
        """Runs the model on the input last fed, nothing else: what a timing should measure."""
        try:
            self.interpreter.invoke()
        except (ValueError, RuntimeError) as e:
            raise TfcError(f"LiteRT cannot run {self.source}: {str(e).strip().splitlines()[0][:200]}") from e

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Float first output [B, ...]."""
        results = []
        for x in batch:
            self._invoke(x)
            results.append(self._dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)[0])
        return np.stack(results)

    def outputs_by_name(self, batch: np.ndarray, names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
        """Every subgraph output (or those in `names`), dequantized, as name -> [B, ...].

        Use on a model from `flatbuffer.expose_all_tensors` to see every
        operator's output, whatever delegate ran it.
        """
        details = self.interpreter.get_output_details()
        if names is not None:
            wanted = set(names)
            details = [d for d in details if d["name"] in wanted]
        results = {d["name"]: [] for d in details}
        for x in batch:
            self._invoke(x)
            for d in details:
                results[d["name"]].append(self._dequantize(self.interpreter.get_tensor(d["index"]), d))
        # A tensor with a batch axis of 1 per image joins along it; any other (a scalar, a computed shape)
        # is stacked, so every value is [B, ...].
        return {k: np.concatenate(v) if v[0].ndim and v[0].shape[0] == 1 else np.stack(v)
                for k, v in results.items()}


def tensor_values(flatbuffer: bytes, names, batch: np.ndarray, *, threads: int = 1) -> Dict[str, np.ndarray]:
    """Values of the named tensors (operator outputs, or the input) on a float NHWC batch, dequantized.

    Every operator output is made a subgraph output first (`flatbuffer.expose_all_tensors`), so what a
    delegate keeps internal is read as well.  An integer input is fed quantized with its own parameters.

    Returns:
      name -> float64 array [B, ...] for each name found.
    """
    runner = LiteRTRunner(fb.expose_all_tensors(flatbuffer), threads=threads)
    names = set(names)
    result = {k: v.astype(np.float64) for k, v in runner.outputs_by_name(batch, names).items()}
    if runner.input["name"] in names:
        result[runner.input["name"]] = np.asarray(batch, np.float64)
    return result


class Sandbox:
    """A child process that loads and runs flatbuffers before this process does (see `litert_child`).

    LiteRT trusts the flatbuffers it is given: a damaged one can crash the
    interpreter (SIGSEGV, SIGABRT) or make it spin.  A file from the user goes
    through `check` first; a crash or a hang ends the child, not this process,
    and becomes a TfcError.  The child is started on first use and restarted
    after a crash; it exits when this process closes its stdin.
    """

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self._proc = None

    def _start(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen([sys.executable, "-m", "tfcompress.export.litert_child"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      env=env)

    def close(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _reply(self) -> Optional[bytes]:
        """The child's answer line; b"" when it died, None when it did not answer in time (it is killed)."""
        ready, _, _ = select.select([self._proc.stdout], [], [], self.timeout)
        if not ready:
            self._proc.kill()
            return None
        line = self._proc.stdout.readline()
        return line if line.endswith(b"\n") else b""

    def check(self, flatbuffer: bytes, source: str) -> None:
        """Raises TfcError unless LiteRT builds, allocates and runs `flatbuffer` without error in the child."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        try:
            self._proc.stdin.write(struct.pack("<Q", len(flatbuffer)) + flatbuffer)
            self._proc.stdin.flush()
            line = self._reply()
        except OSError:  # The child died before reading it all.
            line = b""
        if not line:
            code = self._proc.wait()
            self._proc = None
            if line is None:
                raise TfcError(f"LiteRT did not finish loading and running {source} within {self.timeout:g} s")
            if code >= 0:  # Not a signal: the child could not start or stopped of its own accord.
                raise TfcError(f"the LiteRT check of {source} stopped unexpectedly (exit status {code})")
            try:
                how = signal.Signals(-code).name
            except ValueError:
                how = f"signal {-code}"
            raise TfcError(f"LiteRT crashes on {source} ({how}); the file is damaged or hostile")
        reply = json.loads(line)
        if "error" in reply:
            raise TfcError(f"LiteRT cannot load {source}: {reply['error']}")


_SANDBOX = Sandbox()


def check_untrusted(flatbuffer: bytes, source: str, sandbox: Optional[Sandbox] = None) -> None:
    """Checks a flatbuffer from outside tfcompress: parsed and checked here, then run by LiteRT in a child.

    Args:
      flatbuffer, source: the file's bytes and its name for messages.
      sandbox: the child to use (default: one per process, 60 s per file).

    Raises:
      TfcError: a damaged or inconsistent file, one LiteRT refuses, or one that crashes or hangs LiteRT.
    """
    fb.parse(flatbuffer, source)
    (sandbox or _SANDBOX).check(flatbuffer, source)
