"""The readers of users' files under seeded mutation (tfcompress.testing.fuzz): every damaged cache, flatbuffer
and .tfc is read or refused with a TfcError, in bounded time and memory; `tools/fuzz.py` runs the long version."""

import os
import re
import sys

import pytest

from tests.conftest import TESTDATA
from tfcompress.testing import fuzz

CASES = 200
SEEDS = os.path.join(TESTDATA, "fuzz")


@pytest.mark.parametrize("parser", fuzz.PARSERS)
def test_every_mutant_is_read_or_refused(parser):
    summary = fuzz.run(parser, SEEDS, CASES, seed=1)
    assert summary.cases == CASES
    assert summary.uncaught == {} and summary.hangs == 0, summary.examples
    assert summary.over_memory == 0, (summary.peak_bytes, summary.seed_peak_bytes, summary.examples)
    # Most mutations damage the file and are caught; the reader is not simply refusing everything.
    assert summary.refused > CASES // 2, summary
    if parser != "tfc":  # A .tfc carries its SHA-256: no mutant of one is ever accepted.
        assert summary.accepted > 0, summary


def test_a_huge_declared_size_is_refused_before_allocating():
    """A .tfc that declares a 2 GiB .tflite in a few dozen bytes is refused from its header."""
    from tfcompress.errors import TfcError
    from tfcompress.export import entropy, tfc
    data = tfc.MAGIC + bytes([tfc.VERSION]) + entropy.varint(2 << 30) + bytes(32) + entropy.varint(0)
    with pytest.raises(TfcError, match="declares a 2147483648-byte .tflite, more than a 43-byte .tfc can hold"):
        tfc.unpack(data)


def test_a_hang_is_counted_even_inside_a_broad_except(monkeypatch):
    """A reader that swallows every Exception (as parsers that turn damage into TfcError do) still cannot hide
    a case that runs past the limit."""
    import time
    from tfcompress.errors import TfcError

    def slow_reader(data, workdir):  # pylint: disable=unused-argument
        try:
            time.sleep(1.0)
        except Exception as e:  # pylint: disable=broad-except
            raise TfcError("damaged") from e

    monkeypatch.setattr(fuzz, "SECONDS_PER_CASE", 0.2)
    outcome, seconds, _ = fuzz._measure(slow_reader, b"", "")  # pylint: disable=protected-access
    assert outcome == "hang" and seconds < 1.0


def test_the_mutators_change_their_input_and_are_seeded():
    import numpy as np
    data = bytes(range(256)) * 8
    a = [fuzz.mutate_bytes(data, np.random.default_rng(3)) for _ in range(3)]
    b = [fuzz.mutate_bytes(data, np.random.default_rng(3)) for _ in range(3)]
    assert a == b and all(m != data for m in a)
    in_place = fuzz.mutate_bytes(data, np.random.default_rng(4), in_place=True)
    assert len(in_place) == len(data) and in_place != data



def _crafted(edit):
    """The int8 seed after `edit(model)` on its object form, serialized again."""
    from tfcompress.export import flatbuffer as fb
    with open(os.path.join(SEEDS, "digits_int8.tflite"), "rb") as f:
        model = fb.parse(f.read())
    edit(model)
    return fb.serialize(model)


def _set(obj, field, value):
    setattr(obj, field, value)


@pytest.mark.parametrize("edit, message", [
    (lambda m: _set(m.subgraphs[0].operators[1], "inputs", [0, 10 ** 6]), "an operator input index 1000000 is out"),
    (lambda m: _set(m.subgraphs[0].tensors[0], "buffer", 10 ** 6), "a tensor buffer index 1000000 is out"),
    (lambda m: _set(m.subgraphs[0].tensors[0], "name", b"\xff\xfe"), "a tensor name is not UTF-8"),
    (lambda m: _set(m.subgraphs[0].tensors[0], "type", 99), "unknown tensor type 99"),
    (lambda m: _set(m.subgraphs[0], "outputs", [-1]), "a subgraph output index -1 is out"),
    (lambda m: _set(m.subgraphs[0].tensors[0], "shape", [1, -5, 3]), "a tensor shape [1, -5, 3] is invalid"),
    (lambda m: _set(m.operatorCodes[0], "builtinCode", 10 ** 5), "unknown builtin operator 100000"),
])
def test_inconsistent_structure_is_named(edit, message):
    from tfcompress.errors import TfcError
    from tfcompress.export import flatbuffer as fb
    with pytest.raises(TfcError, match=re.escape(message)):
        fb.parse(_crafted(edit), "crafted.tflite")


def test_an_operator_table_used_twice_is_refused():
    """Operators vectors hold offsets: pointing every entry at one table lets a small file declare any number of
    operators.  The reader refuses a table that two entries share."""
    from tfcompress.errors import TfcError
    from tfcompress.export import flatbuffer as fb
    with open(os.path.join(SEEDS, "digits_int8.tflite"), "rb") as f:
        data = bytearray(f.read())
    subgraph = fb.schema_module().Model.GetRootAsModel(bytes(data), 0).Subgraphs(0)
    tab = subgraph._tab  # pylint: disable=protected-access
    vector = tab.Vector(tab.Offset(10))  # SubGraph.operators, the table's fourth field.
    first = vector + int.from_bytes(data[vector:vector + 4], "little")
    data[vector + 4:vector + 8] = (first - (vector + 4)).to_bytes(4, "little")  # entry 1 -> entry 0's table
    with pytest.raises(TfcError, match="two operators share one table"):
        fb.parse(bytes(data), "aliased.tflite")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
