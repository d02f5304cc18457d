"""calibrate: collect activation statistics for a model and write the calibration cache.

    python tools/calibrate.py --input=net.keras --calibration_images=data/sample \
        --calibration_cache=out/net.ranges.json --input_mean=127.5 --input_std=127.5

quantize_graph (and convert) read the same cache and then read no image.

Sharded over N workers, worker K reads every N-th image from the K-th and
writes its own cache; the caches then merge into the whole's:

    python tools/calibrate.py ... --shard=0/2 --calibration_cache=part0.json   # worker 0
    python tools/calibrate.py ... --shard=1/2 --calibration_cache=part1.json   # worker 1
    python tools/calibrate.py --merge part0.json part1.json --calibration_cache=all.json
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

common.use_system_allocator()

_MODEL = common.define_model_flags()
_CAL = common.define_calibration_flags()
_DATA = common.define_calibration_data_flag()
_SHARD = common.flags.DEFINE_string("shard", None, "K/N: read only every N-th image (or sample) from the K-th "
                                    "(0-based), as worker K of N; merge the N caches with --merge.")
_MERGE = common.flags.DEFINE_boolean("merge", False, "Merge the calibration caches named after the flags (shards "
                                     "of one calibration) into --calibration_cache; reads no model or image.")


def main(caches=()) -> None:
    from tfcompress.api.graph_jobs import calibrate, merge_caches
    from tfcompress.errors import TfcError

    cache_path = _CAL["calibration_cache"].value
    if not cache_path:
        raise TfcError("--calibration_cache is required")
    if _MERGE.value:
        given = [f"--{name}" for name, holder in (("input", _MODEL["input"]), ("shard", _SHARD), ("calibration_data", _DATA),
                                                 ("calibration_images", _CAL["calibration_images"]))
                 if holder.value is not None]
        if given:
            raise TfcError(f"--merge reads only the caches it is given; drop {', '.join(given)}")
        merged = merge_caches(caches, cache_path)
        print(f"calibration cache {cache_path}: {len(merged.stats)} tensors, {merged.image_count} "
              f"{'samples' if 'calibration_data' in merged.preprocessing else 'images'} from {len(caches)} shards")
        return
    if caches:
        raise TfcError(f"unexpected arguments {' '.join(caches)} (cache files are merged with --merge)")
    input_path, images, _ = common.default_inputs(_MODEL, _CAL, _DATA)
    options = common.calibration_options(_CAL)
    result = calibrate(input_path, images, data=_DATA.value, cache=cache_path, recalibrate=_CAL["recalibrate"].value,
                       options=options, load=common.load_options(_MODEL), shard=_shard(_SHARD.value), progress=True)
    calibrator = options.calibrator_config()
    ranges = result.cache.ranges(calibrator)
    print(f"calibration cache {cache_path}: {len(ranges)} tensors, "
          + ("reused (0 read)" if result.reused
             else f"{result.images_read} {'samples' if _DATA.value else 'images'} read"))
    rows = [["tensor", "min", "max", f"range ({calibrator.method})"]]
    for name, (lo, hi) in list(ranges.items())[:12]:
        s = result.cache.stats[name]
        rows.append([name, f"{s.min:.4g}", f"{s.max:.4g}", f"[{lo:.4g}, {hi:.4g}]"])
    common.print_table(rows)
    if len(ranges) > 12:
        print(f"… and {len(ranges) - 12} more")


def _shard(value):
    from tfcompress.errors import TfcError
    if value is None:
        return None
    index, sep, count = value.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = None
    if not sep or shard is None or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise TfcError(f"--shard={value}: give K/N with 0 <= K < N, for example --shard=0/2")
    return shard


def run() -> None:
    common.run_main(main, positional=True)


if __name__ == "__main__":
    run()
