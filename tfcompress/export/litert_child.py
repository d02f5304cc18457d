"""The child process of `litert.Sandbox`: loads and runs flatbuffers it is sent, and says how that went.

Protocol on stdin/stdout: the parent writes an 8-byte little-endian length and
that many bytes of flatbuffer; the child answers one line of JSON,
{"ok": true} or {"error": "..."}.  A crash of the interpreter ends the child,
which the parent reads as end of file.

Each flatbuffer is built, allocated and invoked twice (zeros, then seeded
uniform values over each input's range) with LiteRT's default delegate and
again with its builtin kernels alone: every path a tfcompress command later
takes in its own process.
"""

import json
import os
import resource
import struct
import sys

# Address space the child may use: a crafted file asking for huge tensors ends here, not in the machine's OOM killer.
ADDRESS_SPACE_BYTES = 16 << 30


def _fill(detail, rng, zeros: bool):
    import numpy as np  # pylint: disable=import-outside-toplevel
    shape = [max(int(d), 1) for d in detail["shape"]]
    dtype = np.dtype(detail["dtype"])
    if zeros or dtype == np.bool_:
        return np.zeros(shape, dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape).astype(dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def check(flatbuffer: bytes) -> None:
    """Raises ValueError or RuntimeError when LiteRT refuses the model; crashes the process when LiteRT does."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # pylint: disable=import-outside-toplevel
    for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
        interpreter = Interpreter(model_content=flatbuffer, num_threads=1, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for zeros in (True, False):
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], _fill(detail, rng, zeros))
            interpreter.invoke()
            for detail in interpreter.get_output_details():
                interpreter.get_tensor(detail["index"])


def _read(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    stdin = sys.stdin.buffer
    # Replies go to the original stdout; anything native code prints there goes to stderr (discarded by the parent).
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        try:
            (size,) = struct.unpack("<Q", _read(stdin, 8))
            flatbuffer = _read(stdin, size)
        except EOFError:
            return
        try:
            check(flatbuffer)
            reply = {"ok": True}
        except (ValueError, RuntimeError, MemoryError, TypeError) as e:
            lines = str(e).strip().splitlines() or [type(e).__name__]
            reply = {"error": lines[0][:200]}
        stdout.write((json.dumps(reply) + "\n").encode())
        stdout.flush()


if __name__ == "__main__":
    main()
