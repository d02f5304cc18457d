"""unpack: a .tfc back into the exact .tflite it was packed from.

    python tools/unpack.py --input=net.tfc --output=net_int8.tflite

The result is checked against the SHA-256 recorded at packing time; a
corrupt .tfc is an error and nothing is written.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "The .tfc file.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .tflite file.")
_OVERWRITE = common.define_overwrite_flag()


def main() -> None:
    from tfcompress.errors import TfcError
    from tfcompress.export.tfc import unpack
    from tfcompress.io.atomic import check_output, write_bytes
    if not _INPUT.value or not _OUTPUT.value:
        raise TfcError("--input (.tfc) and --output (.tflite) are required")
    check_output(_OUTPUT.value, [_INPUT.value], overwrite=_OVERWRITE.value, directory=False)
    try:
        with open(_INPUT.value, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TfcError(f"cannot read {_INPUT.value}: {e.strerror}") from e
    tflite = unpack(data, _INPUT.value)
    write_bytes(_OUTPUT.value, tflite, overwrite=_OVERWRITE.value)
    print(f"unpack: {_INPUT.value} ({len(data)} bytes) -> {_OUTPUT.value} ({len(tflite)} bytes, SHA-256 verified)")


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
