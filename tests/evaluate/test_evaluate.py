"""eval, parity, report and export_onnx: numbers checked against computations made here, independently."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CALIBRATION, HELDOUT, KERAS_MODEL, ROOT

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
# eval's reference runs as a frozen TF graph, this test's through Keras: float32 round-off apart.
REFERENCE_ATOL = 1e-5
# TF and onnxruntime compute the same float graph with different kernels.
ONNX_ATOL = 1e-4


def _tool(name, *args, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _heldout():
    """(images [N, 32, 32, 3] in [0, 1], labels) read with Pillow and sorted class folders, as Keras orders them."""
    classes = sorted(os.listdir(HELDOUT))
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(HELDOUT, name))):
            img = np.asarray(Image.open(os.path.join(HELDOUT, name, f)).convert("RGB"), np.float32) / 255.0
            xs.append(img)
            ys.append(label)
    return np.stack(xs), np.asarray(ys)


def _keras_cost():
    """(params, MACs) of the shipped model's conv/depthwise/dense layers, batch norm folded, from Keras alone."""
    import keras
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True)
    params = macs = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            kernel = layer.get_weights()[0]
            out = layer.output.shape
            # After folding, every one of them has a bias of one value per output channel.
            params += kernel.size + int(out[-1])
            if isinstance(layer, keras.layers.Dense):
                macs += kernel.size
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                macs += int(np.prod(out[1:])) * kernel.shape[0] * kernel.shape[1]
            else:
                macs += int(np.prod(out[1:])) * kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    return params, macs


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    _tool("convert", f"--output={out}/int8.tflite", "--quantize=int8", f"--labels_from={HELDOUT}", "--noprogress")
    _tool("convert", f"--output={out}/f16.tflite", "--quantize=float16")
    _tool("quantize_graph", f"--output={out}/q8", "--progress=false")
    proc = _tool("export_onnx", f"--output={out}/m.onnx")
    return out, proc


def test_eval_json_matches_an_independent_computation(artifacts):
    out, _ = artifacts
    path = f"{out}/int8.tflite"
    result = json.loads(_tool("eval", f"--model={path}", f"--reference={KERAS_MODEL}", "--json").stdout)
    import keras
    from ai_edge_litert.interpreter import Interpreter
    images, labels = _heldout()
    reference = keras.saving.load_model(KERAS_MODEL, safe_mode=True).predict(images, verbose=0)
    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], outp["quantization"]
    got = []
    for x in images:
        info = np.iinfo(inp["dtype"])  # uint8: convert's default I/O
        interp.set_tensor(inp["index"], np.clip(np.round(x[None] / s_in) + z_in, info.min, info.max)
                          .astype(inp["dtype"]))
        interp.invoke()
        got.append((interp.get_tensor(outp["index"])[0].astype(np.float32) - z_out) * s_out)
    got = np.stack(got)
    top5 = np.argsort(-got, axis=1, kind="stable")[:, :5]
    assert result["images"] == len(images) == 300
    assert result["top1"] == float(np.mean(got.argmax(1) == labels))
    assert result["top5"] == float(np.mean(np.any(top5 == labels[:, None], axis=1)))
    assert result["agreement_top1"] == float(np.mean(got.argmax(1) == reference.argmax(1)))
    assert abs(result["max_abs_error"] - float(np.max(np.abs(got - reference)))) <= REFERENCE_ATOL
    data = open(path, "rb").read()
    assert result["size_bytes"] == len(data) == os.path.getsize(path)
    assert result["size_gzip_bytes"] == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert result["latency_runs"] >= 50 and result["threads"] == 1 and result["latency_ms"] > 0
    assert result["runtime"] == "tflite"
    assert (result["params"], result["macs"]) == _keras_cost()


def test_cost_agrees_across_formats(artifacts):
    out, _ = artifacts
    expected = _keras_cost()
    for path in (KERAS_MODEL, f"{out}/q8", f"{out}/f16.tflite", f"{out}/m.onnx"):
        result = json.loads(_tool("eval", f"--model={path}", "--json", "--runs=50").stdout)
        assert (result["params"], result["macs"]) == expected, path
        assert result["top1"] is not None


def test_quantized_io_pixels_feeds_raw_pixels(artifacts):
    out, _ = artifacts
    quantize = json.loads(_tool("eval", f"--model={out}/int8.tflite", "--json").stdout)
    pixels = json.loads(_tool("eval", f"--model={out}/int8.tflite", "--json", "--quantized_io=pixels").stdout)
    assert pixels["top1"] == quantize["top1"]
    # Mean 127.5 does not match the model's zero point: raw pixels would be wrong, so it is refused.
    bad = _tool("eval", f"--model={out}/int8.tflite", "--quantized_io=pixels", "--input_mean=127.5",
                "--input_std=127.5", check=False)
    assert bad.returncode == 1 and "--quantized_io=pixels needs" in bad.stderr


def test_latency_times_the_invoke_alone(artifacts, monkeypatch):
    """Feeding (a float image quantized in Python for an integer input) happens once per interpreter, before the
    timed runs; every timed run is one invoke and nothing else."""
    from tfcompress.evaluate import artifacts as timing
    from tfcompress.export.litert import LiteRTRunner
    out, _ = artifacts
    flatbuffers = [(out / name).read_bytes() for name in ("int8.tflite", "f16.tflite")]
    calls = {"feed": 0, "invoke": 0, "predict": 0}

    def counted(name, method):
        def wrapper(self, *args):
            calls[name] += 1
            return method(self, *args)
        return wrapper
    monkeypatch.setattr(LiteRTRunner, "_feed", counted("feed", LiteRTRunner._feed))
    monkeypatch.setattr(LiteRTRunner, "invoke", counted("invoke", LiteRTRunner.invoke))
    monkeypatch.setattr(LiteRTRunner, "predict", counted("predict", LiteRTRunner.predict))
    images, _ = _heldout()
    medians = timing.interleaved_latency(flatbuffers, images[:1], runs=20, blocks=2)
    assert len(medians) == 2 and all(m > 0 for m in medians)
    # 2 blocks x 2 models: one feed each; 5 warm-up and 10 timed invokes each.
    assert calls == {"feed": 4, "invoke": 2 * 2 * (5 + 10), "predict": 0}


def test_eval_bad_input(artifacts, tmp_path):
    out, _ = artifacts
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(open(f"{out}/int8.tflite", "rb").read()[:5000])
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(flat / "a.png")
    empty_class = tmp_path / "labelled"
    (empty_class / "a").mkdir(parents=True)
    (empty_class / "b").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(empty_class / "a" / "x.png")
    labels3 = tmp_path / "labels.txt"
    labels3.write_text("a\nb\nc\n")
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(rgba / "t.png")
    cases = [
        ([f"--model={corrupt}"], "truncated"),
        ([f"--model={tmp_path}/missing.tflite"], "does not exist"),
        ([f"--images={flat}", f"--labels={labels3}"], "has no classes"),
        ([f"--images={empty_class}"], "has no images"),
        ([f"--images={HELDOUT}", f"--labels={labels3}"], "is not in the labels file"),
        ([f"--images={rgba}"], "transparency"),
        (["--runs=10"], "runs"),
    ]
    for args, message in cases:
        proc = _tool("eval", *args, check=False)
        assert proc.returncode == 1, (args, proc.returncode, proc.stderr[-500:])  # 1: a handled error, not a crash.
        lines = [l for l in proc.stderr.strip().splitlines() if l.startswith(("error", "FATAL"))]
        assert lines and message in proc.stderr, (args, proc.stderr[-500:])
    # Labels that name the right classes but not as many as the model outputs.
    few = tmp_path / "few"
    for name in ("0", "1"):
        (few / name).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(few / name / "x.png")
    proc = _tool("eval", f"--images={few}", check=False)
    assert proc.returncode == 1 and "name 2 classes but the model outputs 10" in proc.stderr


def test_export_onnx_parity_determinism_and_bad_opset(artifacts, tmp_path):
    out, proc = artifacts
    assert "parity with onnxruntime on 32 images: max abs diff" in proc.stdout
    second = _tool("export_onnx", f"--output={tmp_path}/again.onnx")
    assert open(f"{out}/m.onnx", "rb").read() == open(f"{tmp_path}/again.onnx", "rb").read()
    import onnxruntime as ort
    images, _ = _heldout()
    session = ort.InferenceSession(f"{out}/m.onnx", providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images[:32]})[0]
    import keras
    expected = keras.saving.load_model(KERAS_MODEL, safe_mode=True).predict(images[:32], verbose=0)
    np.testing.assert_allclose(got, expected, atol=ONNX_ATOL)
    assert "max abs diff" in second.stdout
    bad = _tool("export_onnx", f"--output={tmp_path}/bad.onnx", "--opset=7", check=False)
    assert bad.returncode == 1 and "--opset must be in" in bad.stderr and not os.path.exists(f"{tmp_path}/bad.onnx")


def test_parity_names_the_layer_where_a_changed_reference_diverges(tmp_path):
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.evaluate.parity import check_parity
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import freeze_keras_model, load_model
    from tests.conftest import _tool_module  # pylint: disable=import-outside-toplevel
    parity_tool = _tool_module("parity")  # another tool's flags, defined earlier in this process, are cleared
    reference, _ = optimize(load_model(KERAS_MODEL))
    flatbuffer = parity_tool._default_int8(reference)  # pylint: disable=protected-access
    prep = Preprocessing(height=32, width=32, channels=3)
    images = np.concatenate(list(iter_batches(list_images(CALIBRATION)[:8], prep, 8)))
    report = check_parity(flatbuffer, reference, images)
    unchanged = report
    assert report.output_top1_xnnpack_vs_float == 1.0 and report.output_top1_builtin_vs_float == 1.0
    assert report.first_xnnpack_float_divergence is None and report.first_builtin_float_divergence is None
    assert all(r.kernels_max <= 16 for r in report.tensors)  # The two kernel sets stay within a few steps.
    # A reference whose conv2d_3 weights are changed: float and TFLite now part ways exactly there.
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True)
    w = model.get_layer("conv2d_3").get_weights()
    w[0] = w[0] * 1.5
    model.get_layer("conv2d_3").set_weights(w)
    changed, _ = optimize(freeze_keras_model(model, "changed"))
    report = check_parity(flatbuffer, changed, images)
    first = report.first_xnnpack_float_divergence
    assert first is not None and "conv2d_3_1" in first.tensor, first
    # XNNPACK against builtin kernels runs the same flatbuffer twice: the float reference cannot move it.
    assert [(r.tensor, r.kernels_max) for r in report.tensors] == [(r.tensor, r.kernels_max) for r in unchanged.tensors]
    assert report.first_kernel_divergence == unchanged.first_kernel_divergence


# The shipped model's eightbit graph: the largest relative RMS error of any float tensor it keeps against the
# equalized float graph it was made from (measured 3.1%; 4.5% before equalization was the default).
GRAPH_MAX_RELATIVE_RMS = 0.10


def test_graph_parity_names_the_op_a_changed_reference_moves(artifacts):
    """An eightbit SavedModel against its float graph, tensor by tensor; against a reference whose conv2d_3
    weights are changed, the largest error added by one op is there."""
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.evaluate.parity import check_graph_parity
    from tfcompress.api.graph_jobs import CalibrationOptions
    from tfcompress.graph.runner import run_graph
    from tfcompress.io.loaders import freeze_keras_model, load_model
    out, _ = artifacts
    quantized = load_model(f"{out}/q8")
    float_model = CalibrationOptions().float_model  # The graph quantize_graph quantized: equalized by default.
    reference, _ = float_model(load_model(KERAS_MODEL))
    prep = Preprocessing(height=32, width=32, channels=3)
    images = np.concatenate(list(iter_batches(list_images(CALIBRATION)[:12], prep, 8)))
    report = check_graph_parity(quantized, reference, images, batch_size=5)  # Sums run over unequal batches.
    ops = {r.op for r in report.tensors}
    assert {"Conv2D", "BiasAdd", "Relu", "AddV2", "MatMul"} <= ops, ops
    assert max(r.relative_rms for r in report.tensors) <= GRAPH_MAX_RELATIVE_RMS
    assert all(top1 == 1.0 for top1, _ in report.outputs.values()), report.outputs
    last = report.tensors[-1]  # Its numbers against the two graphs run here, on all images at once.
    feed = {reference.image_input().tensor: images}
    ref = run_graph(reference.graph_def, feed, [last.tensor])[0].astype(np.float64)
    got = run_graph(quantized.graph_def, feed, [last.tensor])[0].astype(np.float64)
    assert last.relative_rms == pytest.approx(np.sqrt(np.sum((got - ref) ** 2) / np.sum(ref ** 2)), rel=1e-6)
    assert last.max_steps == pytest.approx(np.abs(got - ref).max() / ((ref.max() - ref.min()) / 255), rel=1e-6)
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True)
    w = model.get_layer("conv2d_3").get_weights()
    w[0] = w[0] * 1.5
    model.get_layer("conv2d_3").set_weights(w)
    changed, _ = float_model(freeze_keras_model(model, "changed"))
    jump = check_graph_parity(quantized, changed, images).largest_jump
    assert "conv2d_3_1" in jump.tensor and jump.own > 0.2, jump


def test_parity_on_a_graph_needs_a_reference(artifacts):
    out, _ = artifacts
    proc = _tool("parity", f"--model={out}/q8", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error:") and "--reference" in last
    proc = _tool("parity", f"--model={out}/q8", f"--reference={KERAS_MODEL}", "--count=4")
    assert "first divergence from float" in proc.stdout and "top-1 agreement with float 100.00%" in proc.stdout


# Constants of the frozen graph that are not weights (reduction axes, shapes): at most this many bytes.
NON_WEIGHT_CONST_BYTES = 1024


def test_a_keras_model_is_sized_by_its_weights_not_its_file():
    import keras
    from tfcompress.evaluate.artifacts import GraphArtifact
    weights = sum(w.nbytes for w in keras.saving.load_model(KERAS_MODEL, safe_mode=True).get_weights())
    # The shipped .keras holds its optimizer's state too (Adam: two slots per weight) and its config.
    assert os.path.getsize(KERAS_MODEL) > 3 * weights
    artifact = GraphArtifact(KERAS_MODEL)
    assert weights <= artifact.size().raw <= weights + NON_WEIGHT_CONST_BYTES, (artifact.size(), weights)
    artifact.close()


def test_report_writes_html_plots_and_markdown(artifacts, tmp_path):
    out, _ = artifacts
    models = [KERAS_MODEL, f"{out}/q8", f"{out}/int8.tflite", f"{out}/f16.tflite", f"{out}/m.onnx"]
    proc = _tool("report", f"--models={','.join(models)}", f"--images={HELDOUT}", f"--output={tmp_path}/report")
    files = sorted(os.listdir(f"{tmp_path}/report"))
    # The marker makes the folder one tfcompress wrote (replaceable with --overwrite).
    assert files == [".tfcompress-output", "index.html", "quality_vs_latency.png", "quality_vs_size.png",
                     "report.md"]
    for png in ("quality_vs_latency.png", "quality_vs_size.png"):
        data = open(f"{tmp_path}/report/{png}", "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = open(f"{tmp_path}/report/report.md").read()
    rows = [l for l in md.splitlines() if l.startswith("| ") and "model" not in l]
    assert len(rows) == len(models)
    html = open(f"{tmp_path}/report/index.html").read()
    assert "quality_vs_size.png" in html and "quality_vs_latency.png" in html and html.count("<tr>") == len(models) + 1
    assert "int8.tflite" in proc.stdout
    # The Pareto column agrees with a brute-force front over the table's own numbers.
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    quality = [float((c[2] if c[2] != "-" else c[4]).rstrip("%")) for c in cells]
    for name, column in (("size", 8), ("latency", 6)):
        cost = [float(c[column]) for c in cells]
        assert {i for i, c in enumerate(cells) if name in c[12]} == _front(cost, quality), (name, cells)


def _dominated(i, cost, quality):
    return any(cost[j] <= cost[i] and quality[j] >= quality[i] and (cost[j], quality[j]) != (cost[i], quality[i])
               for j in range(len(cost)))


def _front(cost, quality):
    """Brute force: the undominated points, and of points equal in both coordinates only the first."""
    undominated = {i for i in range(len(cost)) if not _dominated(i, cost, quality)}
    return {min(j for j in range(len(cost)) if (cost[j], quality[j]) == (cost[i], quality[i])) for i in undominated}


def test_pareto_front_against_brute_force():
    from tfcompress.evaluate.report import pareto_front
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        cost = rng.integers(0, 6, n).astype(float)  # Small ranges: many ties.
        quality = rng.integers(0, 6, n).astype(float)
        front = pareto_front(cost, quality)
        assert front == sorted(front, key=lambda i: (cost[i], -quality[i], i))
        assert set(front) == _front(cost, quality)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
