"""The bad-input suite: every command, given a missing, corrupt, hostile or inconsistent input, prints exactly one
`error:` line with the expected message, exits 1, leaves no output or temporary file, and leaves its inputs as
they were.  All cases run in this one process (`run_tool_in_process`): a process per case would add only TF's
start-up."""

import hashlib
import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import CALIBRATION, HELDOUT, MODELS, TESTDATA, png_claiming, run_tool_in_process

KERAS = os.path.join(MODELS, "digits_resnet.keras")
PB = os.path.join(MODELS, "digits_resnet.pb")
SAVEDMODEL = os.path.join(MODELS, "digits_resnet_savedmodel")
VGG = os.path.join(MODELS, "patches_vgg.keras")
TFLITE = os.path.join(TESTDATA, "fuzz", "digits_int8.tflite")
TFC = os.path.join(TESTDATA, "fuzz", "digits_int8_sparse.tfc")
TWO = "--input={bad}/two_inputs.pb"


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A folder of bad inputs, made once."""
    import keras
    import tensorflow as tf
    from PIL import Image
    root = tmp_path_factory.mktemp("bad")
    keras_bytes = open(KERAS, "rb").read()
    (root / "corrupt.keras").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "empty.keras").write_bytes(b"")
    (root / "truncated.keras").write_bytes(keras_bytes[:len(keras_bytes) // 2])
    (root / "garbage.h5").write_bytes(bytes(range(256)) * 4)
    (root / "garbage.pb").write_bytes(b"\xff\xfe not a graph" * 8)
    (root / "model.txt").write_text("a model, surely\n")
    (root / "no_model").mkdir()
    (root / "badsm").mkdir()
    (root / "badsm" / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\xff garbage")

    model = keras.saving.load_model(KERAS, safe_mode=True, compile=False)
    weights = model.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[0] = np.nan
    model.set_weights(weights)
    model.save(root / "nan.keras")
    inp = keras.Input((32, 32, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    keras.Model(inp, out).save(root / "lambda.keras")

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 32, 32, 1), name="x")
        tf.identity(x * tf.strings.to_number(tf.io.read_file("/etc/hostname")), name="y")
    (root / "readfile.pb").write_bytes(graph.as_graph_def().SerializeToString())
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 32, 32, 1), name="x")
        tf.identity(x * tf.constant(np.full(1, np.nan, np.float32), name="w"), name="y")
    (root / "nan.pb").write_bytes(graph.as_graph_def().SerializeToString())

    class Variant(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 1], tf.float32)])
        def serve(self, x):
            return {"y": x * 2.0, "v": tf.raw_ops.TensorListFromTensor(tensor=x, element_shape=tf.constant([32, 32, 1]))}

    module = Variant()
    tf.saved_model.save(module, str(root / "variant_sm"), signatures={"serving_default": module.serve})

    for folder in ("no_images", "badimg", "rgba", "bomb", "flat", "user_folder", "few"):
        (root / folder).mkdir()
    for name in [n for n in sorted(os.listdir(CALIBRATION)) if n.endswith(".png")][:3]:
        (root / "few" / name).write_bytes(open(os.path.join(CALIBRATION, name), "rb").read())
    (root / "badimg" / "x.png").write_bytes(b"\x89PNG broken")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(root / "rgba" / "a.png")
    (root / "bomb" / "bomb.png").write_bytes(png_claiming(14000, 14000))
    Image.new("L", (32, 32)).save(root / "flat" / "flat.png")
    (root / "user_folder" / "notes.txt").write_text("the user's own file\n")
    (root / "three.txt").write_text("a\nb\nc\n")
    (root / "blank_line.txt").write_text("zero\none\n\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n")
    (root / "duplicates.txt").write_text("".join(f"{n}\n" for n in ["a", "b", "c", "d", "e", "a", "f", "g", "h", "b"]))

    from tfcompress.calibrate.run import calibrate
    from tfcompress.data.images import Preprocessing, list_images
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import load_model
    from tfcompress.calibrate.calibrators import CalibratorConfig
    float_model, _ = optimize(load_model(KERAS))
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    cache = root / "good.ranges.json"
    calibrate(float_model, prep=prep, calibrator=CalibratorConfig(), images=list_images(CALIBRATION)[:8],
              cache_path=str(cache), progress=False)
    doc = json.loads(cache.read_text())
    stale = json.loads(json.dumps(doc))
    stale["fingerprint"]["model"] = "f" * 64
    (root / "stale.ranges.json").write_text(json.dumps(stale))
    name = sorted(doc["tensors"])[2]
    doc["tensors"][name]["min"] = doc["tensors"][name]["max"] + 1.0
    (root / "minmax.ranges.json").write_text(json.dumps(doc))
    (root / "v1.ranges.json").write_text(json.dumps({"format": "tfcompress.calibration", "version": 1}))
    (root / "garbage.ranges.json").write_text("{ not json")

    tflite = open(TFLITE, "rb").read()
    (root / "corrupt.tflite").write_bytes(tflite[:-200] + bytes(200))
    (root / "truncated.tflite").write_bytes(tflite[:len(tflite) // 3])
    (root / "text.tflite").write_text("not a flatbuffer\n")
    from tfcompress.export import flatbuffer as fb, metadata
    tagged = fb.parse(metadata.attach(tflite, metadata.ModelInfo(name="digits")))
    tagged.buffers[tagged.metadata[-1].buffer].data = np.frombuffer(b"\x04\x00\x00\x00M001\xff\xff\xff\x7f",
                                                                    np.uint8)
    (root / "bad_metadata.tflite").write_bytes(fb.serialize(tagged))
    (root / "garbage.tfc").write_bytes(b"TFCP\x01" + bytes(range(200)))
    from tfcompress.export import entropy, tfc
    (root / "huge.tfc").write_bytes(tfc.MAGIC + bytes([tfc.VERSION]) + entropy.varint(2 << 30) + bytes(32)
                                   + entropy.varint(0))
    (root / "text.tfc").write_text("not packed\n")
    (root / "syntax.yaml").write_text("steps: [prune: {sparsity: 0.5\n")
    (root / "unknown_step.yaml").write_text("steps:\n  - sharpen: {}\n")
    (root / "bad_option.yaml").write_text("steps:\n  - convert: {quantize: int8, calibrator: nonsense}\n")
    (root / "model_copy.keras").write_bytes(keras_bytes)

    graph = tf.Graph()  # Two non-image inputs: calibrated from --calibration_data only.
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, (3, 2), name="a")
        b = tf.compat.v1.placeholder(tf.float32, (2, 4), name="b")
        tf.matmul(a, b, name="y")
    (root / "two_inputs.pb").write_bytes(graph.as_graph_def().SerializeToString())
    good = dict(a=np.ones((2, 3, 2), np.float32), b=np.ones((2, 2, 4), np.float32))
    np.savez(root / "missing_input.npz", a=good["a"])
    np.savez(root / "extra_input.npz", c=good["a"], **good)
    np.savez(root / "wrong_shape.npz", a=np.ones((2, 3, 3), np.float32), b=good["b"])
    np.savez(root / "wrong_dtype.npz", a=good["a"].astype(bool), b=good["b"])
    np.savez(root / "nan.npz", a=np.where(good["a"] > 0, np.nan, 0).astype(np.float32), b=good["b"])
    np.savez(root / "no_samples.npz", a=good["a"][:0], b=good["b"][:0])
    np.savez(root / "counts.npz", a=good["a"], b=good["b"][:1])
    np.savez(root / "objects.npz", a=np.array([{"x": 1}], dtype=object), b=good["b"])
    np.save(root / "single.npy", good["a"])
    (root / "empty.npz").write_bytes(b"")
    (root / "text.npz").write_text("a, b\n1, 2\n")
    return root


# (command, arguments, the error message's start).  {bad} is the folder above, {out} an empty folder for
# outputs, {models} the shipped models.
CASES = [
    # Tensor calibration data (--calibration_data).
    ("quantize_graph", [TWO, "--calibration_data={bad}/missing.npz"], "calibration data {bad}/missing.npz does not exist"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/empty.npz"], "calibration data {bad}/empty.npz is empty"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/text.npz"], "calibration data {bad}/text.npz is not a .npz"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/single.npy"],
     "calibration data {bad}/single.npy is a single .npy array"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/objects.npz"],
     "calibration data {bad}/objects.npz holds pickled objects"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/missing_input.npz"],
     "{bad}/missing_input.npz has no array for input b"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/extra_input.npz"],
     "{bad}/extra_input.npz has an array 'c' that names no input"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/wrong_shape.npz"],
     "{bad}/wrong_shape.npz: the array for input a has shape (2, 3, 3); the input is (3, 2)"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/wrong_dtype.npz"],
     "{bad}/wrong_dtype.npz: input a is float32 and the array is bool"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/nan.npz"], "{bad}/nan.npz: the array for input a contains NaN"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/no_samples.npz"], "{bad}/no_samples.npz holds no samples"),
    ("quantize_graph", [TWO, "--calibration_data={bad}/counts.npz"], "{bad}/counts.npz: input b has 1 samples"),
    ("quantize_graph", [TWO], "eightbit mode needs --calibration_images or --calibration_data"),
    ("quantize_graph", [TWO, "--quantized_fallback_min=-1"], "give --quantized_fallback_min and "
     "--quantized_fallback_max together"),
    ("quantize_graph", [TWO, "--quantized_input", "--quantized_input_min=2", "--quantized_input_max=1",
                        "--quantized_fallback_min=-1", "--quantized_fallback_max=1"],
     "--quantized_input_min/max must be finite with min < max"),
    ("quantize_graph", [TWO, "--mode=weights", "--quantized_fallback_min=-1", "--quantized_fallback_max=1"],
     "--quantized_fallback_min/max apply to --mode=eightbit only"),
    ("calibrate", [TWO, "--calibration_data={bad}/wrong_shape.npz"],
     "{bad}/wrong_shape.npz: the array for input a has shape (2, 3, 3)"),
    ("calibrate", ["--calibration_data={bad}/missing_input.npz"],
     "{bad}/missing_input.npz has an array 'a' that names no input of the model"),
    # Models: missing, empty, corrupt, truncated, of no known format, hostile, NaN, unusual dtypes.
    ("quantize_graph", ["--input={bad}/missing.keras"], "model {bad}/missing.keras does not exist"),
    ("quantize_graph", ["--input={bad}/corrupt.keras"],
     "cannot load Keras model {bad}/corrupt.keras: not a .keras archive"),
    ("quantize_graph", ["--input={bad}/empty.keras"], "cannot load Keras model {bad}/empty.keras: not a .keras"),
    ("quantize_graph", ["--input={bad}/truncated.keras"],
     "cannot load Keras model {bad}/truncated.keras: not a .keras archive"),
    ("quantize_graph", ["--input={bad}/garbage.h5"], "cannot load Keras model {bad}/garbage.h5: corrupt"),
    ("quantize_graph", ["--input={bad}/garbage.pb"], "cannot parse frozen graph {bad}/garbage.pb: corrupt"),
    ("quantize_graph", ["--input={bad}/model.txt"], "model {bad}/model.txt: unknown format"),
    ("quantize_graph", ["--input={bad}/no_model"], "model directory {bad}/no_model has no saved_model.pb"),
    ("quantize_graph", ["--input={bad}/badsm"], "cannot load SavedModel {bad}/badsm: saved_model.pb is corrupt"),
    ("quantize_graph", ["--input={bad}/lambda.keras"], "refusing to load {bad}/lambda.keras: it holds Python code"),
    ("quantize_graph", ["--input={bad}/nan.keras"], "weight digits_resnet_1/conv2d_1/convolution/ReadVariableOp/"
     "resource contains NaN"),
    ("quantize_graph", ["--input={bad}/nan.pb"], "weight w contains NaN"),
    ("quantize_graph", ["--input={bad}/readfile.pb"],
     "{bad}/readfile.pb contains ops outside the allowlist of pure ops (file, exec, debug, dataset or unknown "
     "ops): ReadFile (ReadFile)"),
    ("quantize_graph", ["--input={bad}/variant_sm"], "model {bad}/variant_sm: output v has dtype variant"),
    # Images.
    ("quantize_graph", ["--calibration_images={bad}/no_images"], "image folder {bad}/no_images has no images"),
    ("quantize_graph", ["--calibration_images={bad}/missing_folder"],
     "image folder {bad}/missing_folder does not exist"),
    ("quantize_graph", ["--calibration_images={bad}/badimg"], "cannot read image {bad}/badimg/x.png"),
    ("quantize_graph", ["--calibration_images={bad}/rgba"], "image {bad}/rgba/a.png has transparency"),
    ("quantize_graph", ["--calibration_images={bad}/bomb"],
     "image {bad}/bomb/bomb.png is larger than 64,000,000 pixels"),
    # Caches.
    ("quantize_graph", ["--calibration_cache={bad}/stale.ranges.json"],
     "calibration cache {bad}/stale.ranges.json is stale: it was made for a different model"),
    ("calibrate", ["--calibration_cache={bad}/garbage.ranges.json"],
     "calibration cache {bad}/garbage.ranges.json is unreadable or corrupt"),
    ("calibrate", ["--calibration_cache={bad}/minmax.ranges.json"],
     "calibration cache {bad}/minmax.ranges.json: tensor "),
    ("calibrate", ["--calibration_cache={bad}/v1.ranges.json"],
     "calibration cache {bad}/v1.ranges.json is stale: format version 1"),
    ("calibrate", ["--input={bad}/model_copy.keras", "--calibration_cache={bad}/model_copy.keras", "--recalibrate"],
     "--calibration_cache {bad}/model_copy.keras is inside the input"),
    ("calibrate", ["--calibration_images={bad}/no_images"], "image folder {bad}/no_images has no images"),
    ("calibrate", ["--merge", "{bad}/good.ranges.json", "{bad}/stale.ranges.json"],
     "calibration caches {bad}/good.ranges.json and {bad}/stale.ranges.json were made for different models"),
    ("calibrate", ["--merge", "{bad}/good.ranges.json", "{bad}/garbage.ranges.json"],
     "calibration cache {bad}/garbage.ranges.json is unreadable or corrupt"),
    ("calibrate", ["--merge", "{bad}/good.ranges.json"], "--merge needs at least two calibration caches"),
    ("calibrate", ["--shard=2/2"], "--shard=2/2: give K/N with 0 <= K < N"),
    ("calibrate", ["--input={bad}/variant_sm"], "model {bad}/variant_sm: output v has dtype variant"),
    # Outputs over inputs, existing outputs, unwritable places.
    ("quantize_graph", ["--input={bad}/model_copy.keras", "--output={bad}"],
     "output path {bad} contains the input {bad}/model_copy.keras"),
    ("quantize_graph", ["--output={bad}/user_folder"],
     "output {bad}/user_folder is an existing folder that tfcompress did not create"),
    ("quantize_graph", ["--input={bad}/model_copy.keras", "--output={bad}/model_copy.keras"],
     "output path {bad}/model_copy.keras is inside the input"),
    ("quantize_graph", ["--input=" + SAVEDMODEL, "--output=" + SAVEDMODEL + "/q"],
     "output path " + SAVEDMODEL + "/q is inside the input " + SAVEDMODEL),
    ("convert", ["--quantize=none", "--target=edgetpu", "--strict", "--output={out}/m.tflite"],
     "--strict: the edgetpu preflight found problems"),
    ("convert", ["--output={bad}/three.txt/m.tflite"], "cannot create output directory {bad}/three.txt"),
    ("convert", ["--output={bad}/user_folder"],
     "output {bad}/user_folder is an existing folder that tfcompress did not create"),
    ("convert", ["--labels={bad}/three.txt", "--output={out}/m.tflite"],
     "labels file {bad}/three.txt names 3 classes but the model outputs 10 values"),
    ("convert", ["--labels={bad}/blank_line.txt", "--output={out}/m.tflite"],
     "labels file {bad}/blank_line.txt: line 3 is blank; one label per line, in output order"),
    ("convert", ["--labels={bad}/duplicates.txt", "--output={out}/m.tflite"],
     "labels file {bad}/duplicates.txt has duplicate labels: a, b"),
    ("convert", ["--target=npu", "--output={out}/m.tflite"], "unknown --target 'npu'"),
    ("convert", ["--rounding=adaround", "--calibration_images={bad}/few", "--output={out}/m.tflite"],
     "AdaRound needs at least 16 calibration images, got 3"),
    ("convert", ["--quantize=uint8", "--io=int8", "--output={out}/m.tflite"],
     "--quantize=uint8 cannot give --io=int8 (it gives uint8 or float)"),
    ("convert", ["--quantize=none", "--io=uint8", "--output={out}/m.tflite"],
     "--quantize=none cannot give --io=uint8 (it gives float)"),
    ("convert", ["--float_layers=nope", "--output={out}/m.tflite"], "--float_layers: no layer named 'nope'"),
    ("convert", ["--quantize=float16", "--min_agreement=0.99", "--output={out}/m.tflite"],
     "--float_layers, --min_agreement and --layer_report apply to --quantize=int8 and uint8 only"),
    ("convert", ["--labels_from={bad}/flat", "--output={out}/m.tflite"], "image folder {bad}/flat has no classes"),
    ("convert", ["--input={bad}/nan.keras", "--output={out}/m.tflite"], "weight digits_resnet_1/conv2d_1/"),
    # Flatbuffers and packed files.
    ("eval", ["--model={bad}/missing.tflite"], "model {bad}/missing.tflite does not exist"),
    ("eval", ["--model={bad}/corrupt.tflite"], "LiteRT cannot load {bad}/corrupt.tflite: "),
    ("eval", ["--model={bad}/truncated.tflite"], "{bad}/truncated.tflite is a truncated or corrupt TFLite"),
    ("eval", ["--model={bad}/text.tflite"], "{bad}/text.tflite is not a TFLite flatbuffer"),
    ("eval", ["--model={bad}/bad_metadata.tflite"],
     "{bad}/bad_metadata.tflite: its TFLITE_METADATA buffer is corrupt"),
    ("eval", ["--model=" + TFLITE, "--labels={bad}/three.txt"],
     "class folder '0' of " + HELDOUT + " is not in the labels file {bad}/three.txt"),
    ("eval", ["--model=" + TFLITE, "--images={bad}/no_images"], "image folder {bad}/no_images has no images"),
    ("parity", ["--model={bad}/corrupt.tflite"], "LiteRT cannot load {bad}/corrupt.tflite: "),
    ("parity", ["--model={bad}/missing.tflite"], "model {bad}/missing.tflite does not exist"),
    ("report", ["--models={bad}/missing.tflite", "--output={out}/r.md"], "model {bad}/missing.tflite does not exist"),
    ("report", ["--models={bad}/text.tflite", "--images=" + HELDOUT, "--output={out}/r.md"],
     "{bad}/text.tflite is not a TFLite"),
    ("report", ["--models=" + TFLITE, "--output={out}/r.md"], "--images is required"),
    ("pack", ["--input={bad}/text.tflite", "--output={out}/m.tfc"], "{bad}/text.tflite is not a TFLite"),
    ("pack", ["--input={bad}/truncated.tflite", "--output={out}/m.tfc"],
     "{bad}/truncated.tflite is a truncated or corrupt TFLite"),
    ("pack", ["--input=" + TFLITE, "--output={bad}/user_folder"],
     "output {bad}/user_folder is an existing folder that tfcompress did not create"),
    ("pack", ["--input={bad}/missing.tflite", "--output={out}/m.tfc"], "cannot read {bad}/missing.tflite"),
    ("unpack", ["--input={bad}/garbage.tfc", "--output={out}/m.tflite"], "{bad}/garbage.tfc is corrupt"),
    ("unpack", ["--input={bad}/huge.tfc", "--output={out}/m.tflite"], "{bad}/huge.tfc is corrupt (it declares"),
    ("unpack", ["--input={bad}/text.tfc", "--output={out}/m.tflite"], "{bad}/text.tfc is not a .tfc file"),
    ("unpack", ["--input=" + TFC, "--output=" + TFC], "output path " + TFC + " is inside the input"),
    # ONNX export.
    ("export_onnx", ["--input={bad}/corrupt.keras", "--images=" + HELDOUT, "--output={out}/m.onnx"],
     "cannot load Keras model {bad}/corrupt.keras"),
    ("export_onnx", ["--opset=1", "--images=" + HELDOUT, "--output={out}/m.onnx"], "--opset must be in [13, 18]"),
    ("export_onnx", ["--input={bad}/model_copy.keras", "--images=" + HELDOUT, "--output={bad}/model_copy.keras"],
     "output path {bad}/model_copy.keras is inside the input"),
    # Keras-side methods.
    ("prune", ["--input={bad}/nan.keras", "--output={out}/p.keras"],
     "model {bad}/nan.keras: weight conv2d/kernel contains NaN or Inf"),
    ("prune", ["--sparsity=1.5", "--output={out}/p.keras"], "--sparsity must be in [0, 1), got 1.5"),
    ("prune", ["--train_images={bad}/no_images", "--output={out}/p.keras"],
     "image folder {bad}/no_images has no images"),
    ("prune", ["--input=" + PB, "--output={out}/p.keras"], "this command takes a Keras model (.keras, or .h5)"),
    ("prune", ["--input={bad}/lambda.keras", "--output={out}/p.keras"], "refusing to load {bad}/lambda.keras"),
    ("lowrank", ["--energy=2", "--output={out}/l.keras"], "--energy must be in (0, 1], got 2.0"),
    ("sensitivity", ["--output={out}/s.json"], "--output must name a .png file"),
    ("drop_blocks", ["--input=" + VGG, "--drop_blocks=1", "--output={out}/d.keras"], "the model has no residual"),
    ("cluster", ["--clusters=1", "--output={out}/c.keras"], "--clusters must be between 2 and 256, got 1"),
    ("cluster", ["--input={bad}/corrupt.keras", "--output={out}/c.keras"], "cannot load Keras model {bad}/corrupt"),
    ("pq", ["--block_size=0", "--output={out}/q.keras"], "--block_size must be >= 1, got 0"),
    ("binarize", ["--layers=nope", "--output={out}/b.keras"], "no layer named nope in the model"),
    ("qat", ["--input={bad}/garbage.h5", "--output={out}/q.keras"], "cannot load Keras model {bad}/garbage.h5"),
    ("distill", ["--student=" + KERAS, "--teacher={bad}/missing.keras", "--output={out}/d.keras"],
     "model {bad}/missing.keras does not exist"),
    ("distill", ["--student=" + KERAS, "--teacher=" + KERAS, "--features=oops", "--output={out}/d.keras"],
     "--features entry 'oops' is not student_layer:teacher_layer"),
    # Recipes.
    ("compress", ["--recipe={bad}/syntax.yaml", "--output={out}/c"], "{bad}/syntax.yaml is not valid YAML"),
    ("compress", ["--recipe={bad}/unknown_step.yaml", "--output={out}/c"],
     "{bad}/unknown_step.yaml: step 1: unknown command 'sharpen'"),
    ("compress", ["--recipe={bad}/bad_option.yaml", "--output={out}/c"],
     "recipe step 1 (convert) failed: unknown calibrator 'nonsense'"),
    ("compress", ["--input={bad}/model_copy.keras", "--output={bad}"],
     "output path {bad} contains the input {bad}/model_copy.keras"),
    ("compress", ["--recipe={bad}/missing.yaml", "--output={out}/c"], "cannot read recipe {bad}/missing.yaml"),
    # A user's model is never measured or trained on the shipped demo images.
    ("compress", ["--input={bad}/model_copy.keras", "--output={out}/c"],
     "eval images are required (--eval_images): every artifact is measured on them"),
    ("compress", ["--input={bad}/model_copy.keras", "--eval_images=" + HELDOUT, "--output={out}/c"],
     "step 1 (prune) trains: training images are required (--train_images)"),
]


def _snapshot(*folders):
    """path -> sha256 of every file under the folders."""
    found = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def test_the_suite_covers_every_command_with_sixty_kinds():
    from tools.main import COMMANDS
    assert {case[0] for case in CASES} == set(COMMANDS)
    assert len(CASES) >= 60


@pytest.mark.parametrize("tool, args, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input(bad, tmp_path, tool, args, message):
    out = tmp_path / "out"
    out.mkdir()
    fill = dict(bad=bad, out=out, models=MODELS)
    args = [a.format(**fill) for a in args]
    if tool in ("quantize_graph",) and not any(a.startswith("--output=") for a in args):
        args.append(f"--output={out}/q8")
    if tool == "calibrate" and not any(a.startswith("--calibration_cache=") for a in args):
        args.append(f"--calibration_cache={out}/c.json")
    before = _snapshot(bad, MODELS, os.path.dirname(TFLITE))
    proc = run_tool_in_process(tool, *args)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-1500:]
    assert len(errors) == 1 and errors[0].startswith("error: " + message.format(**fill)), proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert os.listdir(out) == []
    assert _snapshot(bad, MODELS, os.path.dirname(TFLITE)) == before


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
