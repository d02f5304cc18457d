"""Standard TFLite Metadata and I/O types: what convert writes, read back by the schema, not by our reader.

Checks go through the generated bindings' raw accessors (not the object API
the writer uses), the zip archive through `zipfile`, and the I/O types and
quantization through LiteRT.  MediaPipe reading these files is
tests/export/test_mediapipe_client.py.
"""

import io
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.api.graph_jobs import CalibrationOptions
from tfcompress.errors import TfcError
from tfcompress.evaluate.zoo import ZOO
from tfcompress.export import flatbuffer as fb
from tfcompress.export import metadata
from tfcompress.export import metadata_schema_generated as md

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = ZOO["mobilenetv2_patches"]
CLASSES = sorted(os.listdir(ENTRY.heldout))
OPTIONS = CalibrationOptions(input_mean=ENTRY.mean, input_std=ENTRY.std)


@pytest.fixture(scope="module")
def float_tflite(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("md") / "float.tflite")
    tfc.convert(ENTRY.path, out, quantize="none", labels_from=ENTRY.heldout, options=OPTIONS)
    with open(out, "rb") as f:
        return f.read()


def _raw_metadata(flatbuffer: bytes):
    model = fb.parse(flatbuffer)
    [entry] = [m for m in model.metadata if fb.text(m.name) == "TFLITE_METADATA"]
    payload = bytes(np.asarray(model.buffers[entry.buffer].data, np.uint8))
    assert md.ModelMetadata.ModelMetadataBufferHasIdentifier(payload, 0)
    return md.ModelMetadata.GetRootAs(payload, 0)


def test_standard_metadata_fields(float_tflite):
    meta = _raw_metadata(float_tflite)
    assert meta.Name() == b"mobilenetv2_patches" and meta.Version() == b"1" and meta.Description()
    assert meta.MinParserVersion() == b"1.0.0"
    graph = meta.SubgraphMetadata(0)
    assert graph.InputTensorMetadataLength() == 1 and graph.OutputTensorMetadataLength() == 1
    image = graph.InputTensorMetadata(0)
    assert image.Content().ContentPropertiesType() == md.ContentProperties.ImageProperties
    props = md.ImageProperties()
    props.Init(image.Content().ContentProperties().Bytes, image.Content().ContentProperties().Pos)
    assert props.ColorSpace() == md.ColorSpaceType.RGB
    unit = image.ProcessUnits(0)
    assert unit.OptionsType() == md.ProcessUnitOptions.NormalizationOptions
    norm = md.NormalizationOptions()
    norm.Init(unit.Options().Bytes, unit.Options().Pos)
    np.testing.assert_allclose(norm.MeanAsNumpy(), [ENTRY.mean] * 3)
    np.testing.assert_allclose(norm.StdAsNumpy(), [ENTRY.std] * 3)
    # Input stats: the normalized range of pixels 0..255.
    np.testing.assert_allclose(image.Stats().MinAsNumpy(), [(0 - ENTRY.mean) / ENTRY.std] * 3, rtol=1e-6)
    np.testing.assert_allclose(image.Stats().MaxAsNumpy(), [(255 - ENTRY.mean) / ENTRY.std] * 3, rtol=1e-6)
    labels = graph.OutputTensorMetadata(0).AssociatedFiles(0)
    assert labels.Name() == b"labels.txt" and labels.Type() == md.AssociatedFileType.TENSOR_AXIS_LABELS
    with zipfile.ZipFile(io.BytesIO(float_tflite)) as z:
        assert z.namelist() == ["labels.txt"]
        assert z.getinfo("labels.txt").compress_type == zipfile.ZIP_STORED
        assert z.read("labels.txt").decode().splitlines() == CLASSES


def test_read_back_and_rewrite_is_stable(float_tflite):
    info = metadata.read(float_tflite)
    assert info.labels == tuple(CLASSES) and info.mean == (ENTRY.mean,) * 3 and info.channel_order == "rgb"
    assert metadata.attach(float_tflite, info) == float_tflite
    bgr = metadata.attach(float_tflite, metadata.ModelInfo(name="x", mean=(1, 2, 3), std=(4, 5, 6),
                                                           channel_order="bgr"))
    again = metadata.read(bgr)
    assert again.channel_order == "bgr" and again.labels is None and again.mean == (1.0, 2.0, 3.0)
    props = md.ImageProperties()
    content = _raw_metadata(bgr).SubgraphMetadata(0).InputTensorMetadata(0).Content().ContentProperties()
    props.Init(content.Bytes, content.Pos)
    assert props.ColorSpace() == md.ColorSpaceType.UNKNOWN  # the schema has no BGR
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(bgr))  # no labels: no archive left behind


def test_one_std_stands_for_every_channel_as_the_flags_take_it(float_tflite):
    """Caffe-style normalization: a mean per channel and one std (--input_mean=123.68,116.779,103.939
    --input_std=1); the metadata records the std for each channel, as its schema asks."""
    caffe = metadata.read(metadata.attach(float_tflite, metadata.ModelInfo(
        name="x", mean=(123.68, 116.779, 103.939), std=(1.0,), channel_order="bgr")))
    np.testing.assert_array_equal(caffe.mean, np.float32([123.68, 116.779, 103.939]))  # stored as float32
    assert caffe.std == (1.0, 1.0, 1.0)
    assert metadata.ModelInfo(name="x", mean=(127.5,), std=(1.0, 2.0, 4.0)).mean == (127.5,) * 3
    with pytest.raises(TfcError, match="as many finite means as positive stds"):
        metadata.ModelInfo(name="x", mean=(1.0, 2.0), std=(1.0, 2.0, 3.0))


def test_io_types_and_pixel_input_quantization(tmp_path):
    from ai_edge_litert.interpreter import Interpreter
    seen = {}
    for quantize, io_type in (("int8", None), ("int8", "int8"), ("int8", "float"), ("uint8", None)):
        out = str(tmp_path / f"{quantize}_{io_type}.tflite")
        result = tfc.convert(ENTRY.path, out, quantize=quantize, io=io_type, images=ENTRY.calibration,
                             options=OPTIONS, bias_correction="none")
        interpreter = Interpreter(model_path=out)
        detail, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        seen[(quantize, io_type)] = detail["dtype"]
        assert output["dtype"] == detail["dtype"] and result.io == (io_type or "uint8")
        # Mean 127.5: no integer zero point maps raw pixels, so the calibrated input range is kept, said once.
        assert (io_type == "float") != any("no integer input maps raw pixels" in n for n in result.notes)
    assert seen == {("int8", None): np.uint8, ("int8", "int8"): np.int8, ("int8", "float"): np.float32,
                    ("uint8", None): np.uint8}
    # An integer mean (0, std 255): the input maps raw pixels exactly, one step per pixel level.
    digits = ZOO["xception_digits"]
    for io_type, zero in (("uint8", 0), ("int8", -128)):
        out = str(tmp_path / f"digits_{io_type}.tflite")
        tfc.convert(digits.path, out, io=io_type, images=digits.calibration, bias_correction="none",
                    options=CalibrationOptions(input_mean=digits.mean, input_std=digits.std))
        scale, zero_point = Interpreter(model_path=out).get_input_details()[0]["quantization"]
        assert scale == pytest.approx(1 / digits.std, rel=1e-6) and zero_point == zero


@pytest.mark.parametrize("quantize,io_type", [("uint8", "int8"), ("none", "uint8"), ("dynamic", "int8"),
                                              ("int8", "int16")])
def test_io_the_mode_cannot_give_is_refused_before_anything_is_written(quantize, io_type, tmp_path):
    out = tmp_path / "x.tflite"
    with pytest.raises(TfcError, match="--io"):
        tfc.convert(ENTRY.path, str(out), quantize=quantize, io=io_type, images=ENTRY.calibration)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_corrupt_metadata_is_an_error(float_tflite):
    model = fb.parse(float_tflite)
    [entry] = [m for m in model.metadata if fb.text(m.name) == "TFLITE_METADATA"]
    model.buffers[entry.buffer].data = np.frombuffer(b"\x04\x00\x00\x00M001\xff\xff\xff\x7f", np.uint8)
    with pytest.raises(TfcError, match="TFLITE_METADATA buffer is corrupt"):
        metadata.read(fb.serialize(model))
    no_archive = fb.serialize(fb.parse(float_tflite))  # the metadata names labels.txt; the zip is gone
    with pytest.raises(TfcError, match="labels.txt"):
        metadata.read(no_archive)


@pytest.mark.skipif(shutil.which("flatc") is None, reason="flatc not installed (Debian's flatbuffers-compiler)")
def test_bindings_are_what_the_generator_makes(tmp_path):
    work = tmp_path / "tree"
    for part in ("tools/make_metadata_bindings.sh", "third_party/tflite_metadata/metadata_schema.fbs"):
        (work / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, part), work / part)
    (work / "tfcompress" / "export").mkdir(parents=True)
    subprocess.run(["bash", str(work / "tools" / "make_metadata_bindings.sh")], check=True)
    made = (work / "tfcompress" / "export" / "metadata_schema_generated.py").read_bytes()
    with open(md.__file__, "rb") as f:
        assert made == f.read()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
