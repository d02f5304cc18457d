"""The .tflite on aarch64: LiteRT's aarch64 wheel under qemu-aarch64 against this machine's LiteRT.

Optional: it needs the emulated Python of tools/setup_arm64.sh (tools/test.sh
makes it where apt is available, as in CI) and is skipped, saying so,
elsewhere.  Every output must agree within one quantization step (a float
output's step: its span / 255); `tools/arm_parity.py` prints the same for the
whole zoo.
"""

import sys

import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.api.graph_jobs import CalibrationOptions
from tfcompress.data.images import Preprocessing
from tfcompress.data.source import as_source
from tfcompress.errors import TfcError
from tfcompress.evaluate import emulated
from tfcompress.evaluate.zoo import ZOO

IMAGES = 8


def _arm():
    try:
        return emulated.find_arm_python()
    except TfcError as e:
        pytest.skip(f"no ARM emulation here: {e}")


# A two-output model (class + box heads) and a squeeze-and-excitation net, float and int8.
@pytest.mark.parametrize("name", ["boxes_digits", "se_patches"])
def test_aarch64_outputs_within_one_step(name, tmp_path):
    arm = _arm()
    entry = ZOO[name]
    options = CalibrationOptions(input_mean=entry.mean, input_std=entry.std)
    for mode in ("none", "int8"):
        out = str(tmp_path / f"{mode}.tflite")
        tfc.convert(entry.path, out, quantize=mode, options=options,
                    images=None if mode == "none" else entry.calibration, bias_correction="none")
        from ai_edge_litert.interpreter import Interpreter
        shape = tuple(Interpreter(model_path=out).get_input_details()[0]["shape"])
        prep = Preprocessing.for_input(shape, mean=entry.mean, std=entry.std)
        x = next(iter(as_source(entry.heldout).batches(prep, IMAGES)))
        rows = emulated.compare(out, x, arm)
        assert len(rows) == (2 if name == "boxes_digits" else 1)
        for row in rows:
            assert row.dtype == ("float32" if mode == "none" else "uint8")
            assert row.ok, (mode, row)


def test_emulated_failure_is_an_error(tmp_path):
    arm = _arm()
    broken = emulated.ArmPython(root=arm.root, site=str(tmp_path))  # no LiteRT on its path
    entry = ZOO["se_patches"]
    out = str(tmp_path / "f.tflite")
    tfc.convert(entry.path, out, quantize="none")
    with pytest.raises(TfcError, match="emulated aarch64 run .* failed"):
        emulated.compare(out, np.zeros((1, 32, 32, 3), np.float32), broken)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
