"""calibrate: collect activation statistics for a model and write the calibration cache.

    python tools/calibrate.py --input=net.keras --calibration_images=data/sample \
        --calibration_cache=out/net.ranges.json --input_mean=127.5 --input_std=127.5

quantize_graph (and convert) read the same cache and then read no image.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

_MODEL = common.define_model_flags()
_CAL = common.define_calibration_flags()
_DATA = common.define_calibration_data_flag()


def main() -> None:
    from tfcompress.api.graph_jobs import calibrate
    from tfcompress.errors import TfcError

    cache_path = _CAL["calibration_cache"].value
    if not cache_path:
        raise TfcError("--calibration_cache is required")
    input_path, images, _ = common.default_inputs(_MODEL, _CAL, _DATA)
    options = common.calibration_options(_CAL)
    result = calibrate(input_path, images, data=_DATA.value, cache=cache_path, recalibrate=_CAL["recalibrate"].value,
                       options=options, load=common.load_options(_MODEL), progress=True)
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


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
