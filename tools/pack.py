"""pack: a .tflite into the packed .tfc form (sparse offsets, codebooks, Huffman-coded indices).

    python tools/pack.py --input=net_int8.tflite --output=net.tfc

The .tfc holds every byte of the .tflite; `unpack` restores it exactly.  The
format is documented in tfcompress/export/tfc.py.  Prints the packed size
beside the .tflite's raw and gzip -9 sizes, and how each weight buffer was
stored.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "The .tflite to pack.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .tfc file.")
_OVERWRITE = common.define_overwrite_flag()


def main() -> None:
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.measure import bytes_size
    from tfcompress.export.tfc import pack
    from tfcompress.io.atomic import check_output, write_bytes
    if not _INPUT.value or not _OUTPUT.value:
        raise TfcError("--input (.tflite) and --output (.tfc) are required")
    check_output(_OUTPUT.value, [_INPUT.value], overwrite=_OVERWRITE.value, directory=False)
    try:
        with open(_INPUT.value, "rb") as f:
            tflite = f.read()
    except OSError as e:
        raise TfcError(f"cannot read {_INPUT.value}: {e.strerror}") from e
    packed = pack(tflite, _INPUT.value)
    write_bytes(_OUTPUT.value, packed.data)
    size = bytes_size(tflite)
    print(f"\npack: {_INPUT.value} -> {_OUTPUT.value}")
    common.print_table([["weight buffer (offset)", "bytes", "stored as", "codebook", "packed bytes"]] + [
        [b.offset, b.length, b.mode, b.codebook, b.stored] for b in packed.buffers])
    print(f"{len(packed.buffers)} weight buffers packed, {packed.left_in_place} left in the skeleton "
          f"({packed.skeleton} bytes compressed)")
    common.print_table([["size", "bytes", "vs .tflite"], [".tflite raw", size.raw, "1.00x"],
                        [".tflite gzip -9", size.gzip, f"{size.raw / size.gzip:.2f}x smaller"],
                        [".tfc packed", len(packed.data), f"{size.raw / len(packed.data):.2f}x smaller"]])


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
