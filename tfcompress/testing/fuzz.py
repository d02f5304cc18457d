"""Seeded mutation fuzzing of the readers that take files from users: calibration caches, TFLite flatbuffers
and packed `.tfc` files.

Each case mutates a valid seed (bytes flipped, deleted or inserted; a 32-bit
word or a LEB128 integer field overwritten with an extreme value; a cut; for
caches also a JSON value replaced by an odd one) and hands it to the reader a
command uses.  The reader must accept it or raise TfcError: any other
exception, a case over the time limit, or a crash of this process is a
defect.  A flatbuffer the reader accepts also goes through LiteRT, in the
sandbox child (`export.litert.check_untrusted`) and then in this process as
`eval` runs it, so a file that would crash the interpreter must be caught
before it reaches this process.

Peak memory is traced per case (Python and numpy allocations, `tracemalloc`)
and compared with the largest peak of reading the valid seeds.

The seeds are made by `make_seeds` (committed in testdata/fuzz): the shipped
digits model's int8 and float16 `.tflite` and a sparse, clustered int8
variant, the `.tfc` of each, and calibration caches of two calibrators.
"""

import copy
import dataclasses
import glob
import json
import os
import signal
import tempfile
import time
import tracemalloc
from typing import Callable, Dict, List

import numpy as np

from tfcompress.errors import TfcError

PARSERS = ("cache", "flatbuffer", "tfc")
SECONDS_PER_CASE = 10.0
MEMORY_FACTOR = 4.0  # A case's traced peak may be at most this multiple of the largest valid seed's.

_WORDS = (0, 1, 2, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF0)
_ODD_JSON = [None, True, -1, 0, 2 ** 70, -1e30, 1e30, float("nan"), float("inf"), "x", [], {}, [1, -5, 3], [[1]],
             {"min": 1}, 0.5, -0.0, "é", [0] * 5000]


class _Hang(BaseException):
    """Raised by the timer when a case runs past SECONDS_PER_CASE (a BaseException, so that a reader's broad
    `except Exception`, which turns damage into a TfcError, cannot hide it)."""


def _on_alarm(signum, frame):  # pylint: disable=unused-argument
    raise _Hang()


def mutate_bytes(data: bytes, rng, regions=None, in_place: bool = False) -> bytes:
    """One to eight byte-level edits; with `regions` ([start, end) ranges), edits land in them half the time.

    `in_place` edits only overwrite (flipped bits, bytes, 32-bit words), so every offset stays where it was.
    """
    out = bytearray(data)

    def position():
        if regions and rng.random() < 0.5:
            start, end = regions[int(rng.integers(len(regions)))]
            return int(rng.integers(start, max(end, start + 1)))
        return int(rng.integers(max(len(out), 1)))

    for _ in range(int(rng.integers(1, 9))):
        i = min(position(), max(len(out) - 1, 0))
        kind = (0, 1, 4)[int(rng.integers(3))] if in_place else int(rng.integers(7))
        if kind == 0:
            out[i:i + 1] = bytes([int(rng.integers(256))])
        elif kind == 1:
            out[i:i + 1] = bytes([out[i] ^ (1 << int(rng.integers(8)))]) if out else b""
        elif kind == 2:
            del out[i:i + int(rng.integers(1, 17))]
        elif kind == 3:
            out[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8))
        elif kind == 4:
            word = _WORDS[int(rng.integers(len(_WORDS)))] if rng.random() < 0.7 else int(rng.integers(1 << 32))
            out[i:i + 4] = word.to_bytes(4, "little")[:len(out) - i] if in_place else word.to_bytes(4, "little")
        elif kind == 5:  # A LEB128 integer that runs long or is huge.
            out[i:i + 1] = bytes([0xFF] * int(rng.integers(1, 10)) + [int(rng.integers(128))])
        else:
            del out[int(rng.integers(8, max(len(out), 9))):]
    if out == data:  # Every edit happened to write what was there: flip a bit, so no case is the seed itself.
        i = int(rng.integers(len(out)))
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _json_paths(doc) -> List[tuple]:
    paths = []

    def walk(node, path):
        paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            walk(value, path + (key,))

    walk(doc, ())
    return paths[1:]


def mutate_json(text: str, rng, paths=None) -> bytes:
    """A JSON value replaced by an odd one, or a key deleted (half of them near the top of the document)."""
    doc = json.loads(text)
    paths = paths if paths is not None else _json_paths(doc)
    pool = [p for p in paths if len(p) <= 3] if rng.random() < 0.5 else paths
    path = pool[int(rng.integers(len(pool)))]
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(_ODD_JSON[int(rng.integers(len(_ODD_JSON)))])
    return json.dumps(doc).encode()


# The readers, as the commands call them.  The sandbox gives up on a file before a case's time runs out.
_SANDBOX = None


def _sandbox():
    global _SANDBOX  # pylint: disable=global-statement
    if _SANDBOX is None:
        from tfcompress.export import litert  # pylint: disable=import-outside-toplevel
        _SANDBOX = litert.Sandbox(timeout=SECONDS_PER_CASE / 2)
    return _SANDBOX


def read_cache(data: bytes, workdir: str) -> None:
    from tfcompress.calibrate import cache as cache_lib  # pylint: disable=import-outside-toplevel
    path = os.path.join(workdir, "case.ranges.json")
    with open(path, "wb") as f:
        f.write(data)
    loaded = cache_lib.load(path)
    for lo, hi in loaded.ranges().values():  # What is accepted must give usable ranges.
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise AssertionError(f"an accepted cache gives the range [{lo}, {hi}]")


def read_flatbuffer(data: bytes, workdir: str) -> None:  # pylint: disable=unused-argument
    from tfcompress.export import flatbuffer as fb, litert, metadata, tfc  # pylint: disable=import-outside-toplevel
    model = fb.parse(data, "case.tflite")
    fb.tensors(model)
    fb.operators(model)
    metadata.read(data, "case.tflite")
    tfc.weight_buffers(data)
    litert.check_untrusted(data, "case.tflite", _sandbox())
    runner = litert.LiteRTRunner(data, source="case.tflite")  # As eval runs it, in this process.
    runner.predict(np.zeros((1,) + runner.input_shape[1:], np.float32))


def read_tfc(data: bytes, workdir: str) -> None:  # pylint: disable=unused-argument
    from tfcompress.export import flatbuffer as fb, tfc  # pylint: disable=import-outside-toplevel
    fb.parse(tfc.unpack(data, "case.tfc"), "the unpacked .tflite")


READERS: Dict[str, Callable[[bytes, str], None]] = {"cache": read_cache, "flatbuffer": read_flatbuffer,
                                                    "tfc": read_tfc}
_PATTERNS = {"cache": "*.ranges.json", "flatbuffer": "*.tflite", "tfc": "*.tfc"}


@dataclasses.dataclass
class Summary:
    """What a parser's fuzz run found."""
    parser: str
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    uncaught: Dict[str, int] = dataclasses.field(default_factory=dict)
    hangs: int = 0
    slowest_seconds: float = 0.0
    seed_peak_bytes: int = 0
    peak_bytes: int = 0
    over_memory: int = 0
    sandbox_crashes: int = 0  # Files LiteRT crashes on, caught in the child: refused, as designed.
    examples: List[str] = dataclasses.field(default_factory=list)  # Defects and sandboxed crashes, by case.

    @property
    def defects(self) -> int:
        return sum(self.uncaught.values()) + self.hangs + self.over_memory


def load_seeds(seed_dir: str, parser: str) -> List[bytes]:
    paths = sorted(glob.glob(os.path.join(seed_dir, _PATTERNS[parser])))
    if not paths:
        raise TfcError(f"no {parser} seeds ({_PATTERNS[parser]}) in {seed_dir}; make them with "
                       "tools/fuzz.py --make_seeds")
    seeds = []
    for path in paths:
        with open(path, "rb") as f:
            seeds.append(f.read())
    return seeds


def _structure_regions(seed: bytes, parser: str):
    """Byte ranges that hold structure rather than weight values (the flatbuffer outside its buffers; the
    .tfc header), where mutations find more."""
    if parser == "flatbuffer":
        from tfcompress.export import tfc  # pylint: disable=import-outside-toplevel
        regions, pos = [], 0
        for offset, length, _ in tfc.weight_buffers(seed):
            if offset > pos:
                regions.append((pos, offset))
            pos = max(pos, offset + length)
        return regions + [(pos, len(seed))]
    if parser == "tfc":
        return [(0, min(len(seed), 256))]
    return None


def _measure(reader, data: bytes, workdir: str):
    """(outcome, seconds, traced peak bytes above what was held before) of one read; outcome is accepted,
    refused, refused:crash (LiteRT crashed in the sandbox), hang or an exception's name."""
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_CASE)
    try:
        reader(data, workdir)
        outcome = "accepted"
    except TfcError as e:
        outcome = "refused:crash" if "LiteRT crashes" in str(e) else "refused"
    except _Hang:
        outcome = "hang"
    except Exception as e:  # pylint: disable=broad-except  # What the fuzzer is looking for.
        outcome = type(e).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - start
    if seconds > SECONDS_PER_CASE:  # Native code can hold the timer's signal until it returns.
        outcome = "hang"
    return outcome, seconds, tracemalloc.get_traced_memory()[1] - baseline


def run(parser: str, seed_dir: str, cases: int, seed: int = 0, progress: Callable[[int], None] = None) -> Summary:
    """Fuzzes one parser with `cases` seeded mutations of the seeds in `seed_dir`."""
    reader = READERS[parser]
    seeds = load_seeds(seed_dir, parser)
    summary = Summary(parser)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    rng = np.random.default_rng(seed)
    try:
        with tempfile.TemporaryDirectory(prefix="tfcompress-fuzz-") as workdir:
            reader(seeds[0], workdir)  # Imports and the sandbox's start-up are not a case's cost.
            for data in seeds:
                outcome, _, peak = _measure(reader, data, workdir)
                if outcome != "accepted":
                    raise TfcError(f"a {parser} seed in {seed_dir} is not read ({outcome}); remake the seeds")
                summary.seed_peak_bytes = max(summary.seed_peak_bytes, peak)
            regions = [_structure_regions(s, parser) for s in seeds]
            texts = [s.decode() for s in seeds] if parser == "cache" else None
            paths = [_json_paths(json.loads(t)) for t in texts] if texts else None
            for case in range(cases):
                k = case % len(seeds)
                if parser == "cache" and case % 2 == 0:
                    data = mutate_json(texts[k], rng, paths[k])
                else:
                    data = mutate_bytes(seeds[k], rng, regions[k], in_place=case % 3 == 1)
                outcome, seconds, peak = _measure(reader, data, workdir)
                summary.cases += 1
                summary.slowest_seconds = max(summary.slowest_seconds, seconds)
                summary.peak_bytes = max(summary.peak_bytes, peak)
                if outcome == "accepted":
                    summary.accepted += 1
                elif outcome.startswith("refused"):
                    summary.refused += 1
                    summary.sandbox_crashes += outcome == "refused:crash"
                elif outcome == "hang":
                    summary.hangs += 1
                else:
                    summary.uncaught[outcome] = summary.uncaught.get(outcome, 0) + 1
                if peak > MEMORY_FACTOR * summary.seed_peak_bytes:
                    summary.over_memory += 1
                if outcome not in ("accepted", "refused") or peak > MEMORY_FACTOR * summary.seed_peak_bytes:
                    if len(summary.examples) < 5:
                        summary.examples.append(f"case {case}: {outcome}, {seconds:.1f} s, peak {peak >> 20} MiB")
                if progress is not None:
                    progress(case + 1)
    finally:
        if started:
            tracemalloc.stop()
    return summary


def _sparse_clustered(tflite: bytes, rng) -> bytes:
    """The same flatbuffer with 80% of each weight buffer's elements zeroed and the rest drawn from 16 values."""
    from tfcompress.export import tfc  # pylint: disable=import-outside-toplevel
    out = bytearray(tflite)
    for offset, length, dtype in tfc.weight_buffers(tflite):
        element = tfc.element_dtype(dtype)
        values = np.frombuffer(bytes(out[offset:offset + length]), element).copy()
        palette = np.unique(values)[:16]
        values = palette[rng.integers(len(palette), size=values.size)]
        values[rng.random(values.size) < 0.8] = 0
        out[offset:offset + length] = values.astype(element).tobytes()
    return bytes(out)


def make_seeds(model_path: str, images: List[str], output_dir: str) -> List[str]:
    """Writes the seeds for every parser into `output_dir` (see the module docstring); their paths."""
    from tfcompress.api import graph_jobs  # pylint: disable=import-outside-toplevel
    from tfcompress.export import tfc  # pylint: disable=import-outside-toplevel
    from tfcompress.io.atomic import write_bytes  # pylint: disable=import-outside-toplevel
    os.makedirs(output_dir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        flatbuffers = {}
        for quantize in ("int8", "float16"):
            path = os.path.join(tmp, f"{quantize}.tflite")
            graph_jobs.convert(model_path, path, quantize=quantize, images=images if quantize == "int8" else None,
                               bias_correction="none")
            with open(path, "rb") as f:
                flatbuffers[quantize] = f.read()
        flatbuffers["int8_sparse"] = _sparse_clustered(flatbuffers["int8"], np.random.default_rng(0))
        for name, data in flatbuffers.items():
            for suffix, payload in ((".tflite", data), (".tfc", tfc.pack(data).data)):
                written.append(os.path.join(output_dir, f"digits_{name}{suffix}"))
                write_bytes(written[-1], payload, overwrite=True)
        for method in ("minmax",):
            path = os.path.join(output_dir, f"digits_{method}.ranges.json")
            graph_jobs.calibrate(model_path, images, cache=path, recalibrate=True,
                                 options=graph_jobs.CalibrationOptions(calibrator=method))
            written.append(path)
    return written
