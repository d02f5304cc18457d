"""Recipes: schema checks, and `compress` end to end (every artifact, the manifest, the same bytes twice)."""

import dataclasses
import hashlib
import json
import os

import pytest

from tests.conftest import CALIBRATION, HELDOUT, ROOT, error_lines, run_tool
from tfcompress import recipe
from tfcompress.api.compress import check_recipe, known_options
from tfcompress.errors import TfcError


def test_steps_and_their_options():
    steps = recipe.parse_recipe("steps: [{prune: {method: magnitude, sparsity: 0.9, m_by_n: ''}}, {cluster: {}},"
                                " {convert: {quantize: int8, per_tensor: true, float_layers: [a, b]}}, {pack: null}]",
                                "r.yaml")
    assert [s.command for s in steps] == ["prune", "cluster", "convert", "pack"]
    assert [s.output_name for s in steps] == ["01_prune.keras", "02_cluster.keras", "03_convert.tflite", "04_pack.tfc"]
    assert steps[0].flags == {"method": "magnitude", "sparsity": 0.9, "m_by_n": ""}
    assert steps[2].flags == {"quantize": "int8", "per_tensor": True, "float_layers": ["a", "b"]}
    check_recipe(steps)


def test_recipe_options_come_from_the_api_signatures():
    """Every keyword of a job and of its options dataclass is a recipe option; nothing else is."""
    import inspect
    from tfcompress.api import graph_jobs, keras_jobs
    prune = set(known_options("prune"))
    assert {"method", "sparsity", "ratio", "m_by_n", "layer_epochs", "epochs", "alpha", "seed"} <= prune
    assert {"model", "output", "options", "progress", "overwrite"}.isdisjoint(prune)
    convert = set(known_options("convert"))
    assert {"quantize", "per_tensor", "per_channel", "calibrator", "float_layers", "calibration_images"} <= convert
    signature = {p.name for p in inspect.signature(keras_jobs.cluster).parameters.values()
                 if p.kind == p.KEYWORD_ONLY} - {"options"}
    assert signature <= set(known_options("cluster"))
    assert "teacher" in known_options("distill") and "teacher" not in prune
    assert known_options("pack") == []
    fields = {f.name for f in dataclasses.fields(graph_jobs.CalibrationOptions)}
    assert fields <= convert


@pytest.mark.parametrize("text, message", [
    ("steps: [{squash: {}}]", "unknown command 'squash'"),
    ("steps: [{convert: {}}, {cluster: {}}]", "step 2 (cluster) is out of order"),
    ("steps: [{pack: {}}]", "step 1 (pack) is out of order"),
    ("steps: [{prune: {output: x.keras}}]", "--output is set by the recipe runner"),
    ("steps: [{prune: {}, cluster: {}}]", "step 1 must be a one-key mapping"),
    ("steps: []", "non-empty list"),
    ("steps: [{prune: [1, 2]}]", "flags must be a mapping"),
    ("steps: [{prune: {sparsity: }}]", "flag sparsity needs a value"),
    ("steps: [", "not valid YAML"),
])
def test_bad_recipes(text, message):
    with pytest.raises(TfcError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recipe.parse_recipe(text, "r.yaml")


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "recipes")) if n.endswith(".yaml")))
def test_shipped_recipes_are_valid(name):
    path = os.path.join(ROOT, "recipes", name)
    with open(path, encoding="utf-8") as f:
        steps = recipe.parse_recipe(f.read(), path)
    check_recipe(steps)


def test_unknown_flag_is_caught_before_any_step_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [{prune: {sparsity: 0.5, epochz: 3}}, {convert: {}}]\n")
    out = tmp_path / "out"
    proc = run_tool("compress", f"--recipe={bad}", f"--output={out}", "--noprogress")
    assert proc.returncode == 1 and len(error_lines(proc)) == 1
    assert "unknown flag 'epochz'" in error_lines(proc)[0]
    assert not out.exists() and os.listdir(tmp_path) == ["bad.yaml"]


def test_failing_step_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [{cluster: {clusters: 300, epochs: 0}}]\n")
    out = tmp_path / "out"
    proc = run_tool("compress", f"--recipe={bad}", f"--output={out}", "--noprogress", "--runs=0")
    assert proc.returncode == 1
    assert "step 1 (cluster) failed" in error_lines(proc)[-1] and "between 2 and 256" in error_lines(proc)[-1]
    assert not out.exists() and os.listdir(tmp_path) == ["bad.yaml"]


SHORT = """steps:
  - cluster: {clusters: 8, epochs: 1}
  - convert: {quantize: int8, per_tensor: true}
  - pack: {}
"""


def test_compress_in_process_gives_the_bytes_of_the_commands_run_one_by_one(tmp_path):
    """compress runs its steps through the API in one process; each command in its own process must give the same
    bytes for every artifact (same inputs, same output bytes, whichever way the job is run).  compress trains,
    so its process runs TF's own kernels (`keras.kernels`); convert alone runs them too here, since oneDNN's
    float kernels round calibration activations differently."""
    path = tmp_path / "short.yaml"
    path.write_text(SHORT)
    out = tmp_path / "a"
    proc = run_tool("compress", f"--recipe={path}", f"--output={out}", f"--train_images={CALIBRATION}",
                    f"--eval_images={HELDOUT}", "--noprogress", "--runs=50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tmp_path / "one_by_one"
    one.mkdir()
    model = os.path.join(ROOT, "testdata", "models", "digits_resnet.keras")
    for args in (["cluster", f"--input={model}", f"--output={one / '01_cluster.keras'}", "--clusters=8",
                  "--epochs=1", f"--train_images={CALIBRATION}", "--noprogress"],
                 ["convert", f"--input={one / '01_cluster.keras'}", f"--output={one / '02_convert.tflite'}",
                  "--quantize=int8", "--per_tensor", f"--calibration_images={CALIBRATION}", "--noprogress"],
                 ["pack", f"--input={one / '02_convert.tflite'}", f"--output={one / '03_pack.tfc'}"]):
        step = run_tool(*args, env={"TF_ENABLE_ONEDNN_OPTS": "0"})
        assert step.returncode == 0, step.stderr[-3000:]
    runs = [out, one]
    names = sorted(n for n in os.listdir(runs[0]) if n != ".tfcompress-output")  # The folder's marker aside.
    assert names == ["01_cluster.keras", "02_convert.tflite", "03_pack.tfc", "manifest.json"]
    for name in names[:-1]:  # Same inputs, same bytes: every artifact.
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["versions"]["tensorflow-cpu"] == "2.21.0"
    assert manifest["input"]["sha256"] == _sha256(os.path.join(ROOT, "testdata", "models", "digits_resnet.keras"))
    assert manifest["data"]["eval_images"]["files"] == 300
    steps = manifest["steps"]
    assert [s["command"] for s in steps] == ["input", "cluster", "convert", "pack"]
    for s in steps[1:]:
        assert s["sha256"] == _sha256(runs[0] / s["output"])
        assert 0.0 <= s["accuracy"] <= 1.0 and s["latency_ms"] > 0
    # The pack step deploys the convert step's .tflite: same flatbuffer, so the same accuracy.
    assert steps[3]["tflite_bytes"] == steps[2]["tflite_bytes"] and steps[3]["accuracy"] == steps[2]["accuracy"]
    assert steps[3]["packed_bytes"] == os.path.getsize(runs[0] / "03_pack.tfc") < steps[2]["tflite_gzip_bytes"]
    assert steps[3]["ratio_vs_float_tflite"] == pytest.approx(steps[0]["tflite_bytes"] / steps[3]["packed_bytes"])


def _sha256(path):
    """Computed here with hashlib, independently of the manifest writer's own helper."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
