"""fuzz: seeded mutation fuzzing of the cache, flatbuffer and .tfc readers; prints a summary table.

    python tools/fuzz.py                         # 10,000 cases per parser on testdata/fuzz (about 15 min)
    python tools/fuzz.py --parsers=tfc --cases=500
    python tools/fuzz.py --make_seeds            # remake testdata/fuzz from the shipped model

Each case must be read or refused with an error line: an uncaught exception,
a case over 10 s, a traced peak memory above 4x the largest valid seed's, or
a crash of this process is a defect (see tfcompress/testing/fuzz.py).  Exits
1 if any parser has a defect.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_PARSERS = flags.DEFINE_list("parsers", ["cache", "flatbuffer", "tfc"], "Parsers to fuzz: cache, flatbuffer, tfc.")
_CASES = flags.DEFINE_integer("cases", 10000, "Mutations per parser.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the mutations.")
_SEEDS = flags.DEFINE_string("seeds", os.path.join(common.TESTDATA, "fuzz"), "Folder of valid seed files.")
_MAKE_SEEDS = flags.DEFINE_boolean("make_seeds", False, "Write the seed files into --seeds from the shipped model "
                                   "and calibration images, then stop.")


def main() -> None:
    from tfcompress.data.images import list_images
    from tfcompress.errors import TfcError
    from tfcompress.testing import fuzz
    if _MAKE_SEEDS.value:
        for path in fuzz.make_seeds(common.DEFAULT_MODEL, list_images(common.DEFAULT_CALIBRATION)[:16],
                                    _SEEDS.value):
            print(f"{path}: {os.path.getsize(path)} bytes")
        return
    unknown = sorted(set(_PARSERS.value) - set(fuzz.PARSERS))
    if unknown:
        raise TfcError(f"unknown --parsers {', '.join(unknown)}; choose from {', '.join(fuzz.PARSERS)}")
    rows = [["parser", "cases", "accepted", "refused", "uncaught", "hangs", "LiteRT crashes caught",
             "slowest case", "peak / largest seed's", "defects"]]
    summaries = []
    for parser in _PARSERS.value:
        summary = fuzz.run(parser, _SEEDS.value, _CASES.value, seed=_SEED.value)
        summaries.append(summary)
        uncaught = ", ".join(f"{k} {v}" for k, v in sorted(summary.uncaught.items())) or "0"
        rows.append([parser, summary.cases, summary.accepted, summary.refused, uncaught, summary.hangs,
                     summary.sandbox_crashes if parser == "flatbuffer" else "-", f"{summary.slowest_seconds:.2f} s",
                     f"{summary.peak_bytes / max(summary.seed_peak_bytes, 1):.2f}x", summary.defects])
        print(f"{parser}: {summary.cases} cases done", file=sys.stderr)
    common.print_table(rows)
    for summary in summaries:
        for example in summary.examples:
            print(f"{summary.parser} {example}")
    if any(s.defects for s in summaries):
        raise TfcError("the fuzzer found defects (see the table)")


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
