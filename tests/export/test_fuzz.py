"""The readers of users' files under seeded mutation (tfcompress.testing.fuzz): every damaged cache, flatbuffer
and .tfc is read or refused with a TfcError, in bounded time and memory; `tools/fuzz.py` runs the long version."""

import os
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


def test_the_mutators_change_their_input_and_are_seeded():
    import numpy as np
    data = bytes(range(256)) * 8
    a = [fuzz.mutate_bytes(data, np.random.default_rng(3)) for _ in range(3)]
    b = [fuzz.mutate_bytes(data, np.random.default_rng(3)) for _ in range(3)]
    assert a == b and all(m != data for m in a)
    in_place = fuzz.mutate_bytes(data, np.random.default_rng(4), in_place=True)
    assert len(in_place) == len(data) and in_place != data


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
