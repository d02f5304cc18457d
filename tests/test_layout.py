"""The layout shows the data flow: the Keras-side methods depend on the Keras foundation and the data layer,
never on each other nor on export/ or evaluate/; and every serializable Keras object is in the one registry."""

import ast
import os

import pytest

from tests.conftest import ROOT

METHODS = ("prune", "cluster", "lowrank", "qat", "binary", "distill")
FORBIDDEN_FOR_METHODS = METHODS + ("export", "evaluate")
PACKAGE = os.path.join(ROOT, "tfcompress")


def _imports(path):
    """Every tfcompress module a file imports, at any depth (top level or inside a function)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tfcompress."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tfcompress":
                found.update(f"tfcompress.{a.name}" for a in node.names)
            elif node.module.startswith("tfcompress."):
                found.add(node.module)
    return found


def _subpackage(module):
    return module.split(".")[1]


def test_methods_import_only_the_foundation_and_the_data_layer():
    offences = []
    for method in METHODS:
        folder = os.path.join(PACKAGE, method)
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py"):
                continue
            for module in sorted(_imports(os.path.join(folder, name))):
                target = _subpackage(module)
                if target in FORBIDDEN_FOR_METHODS and target != method:
                    offences.append(f"tfcompress/{method}/{name} imports {module}")
    assert not offences, "\n".join(offences)


def test_the_foundation_and_data_layer_import_no_method():
    """keras/ and data/ are below every method: they import none (the registry names modules only as strings)."""
    offences = []
    for layer in ("keras", "data"):
        folder = os.path.join(PACKAGE, layer)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                offences += [f"tfcompress/{layer}/{name} imports {m}" for m in sorted(_imports(os.path.join(folder, name)))
                             if _subpackage(m) in FORBIDDEN_FOR_METHODS]
    assert not offences, "\n".join(offences)


def test_the_import_check_sees_function_level_imports(tmp_path):
    """The check above must catch the lazy form too, or it could pass while a method reaches into export/."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from tfcompress.export.tflite import convert_tflite\n"
                     "    import tfcompress.evaluate.zoo\n")
    assert _imports(str(probe)) == {"tfcompress.export.tflite", "tfcompress.evaluate.zoo"}


def test_every_test_file_runs_its_tests_under_bazel():
    """Bazel runs a py_test file as a script: without the pytest.main block it would pass having run nothing.

    It reads the source tree, which Bazel's runfiles do not hold: tools/test.sh runs this file with pytest
    before `bazel test`, so the check runs in CI either way.
    """
    if not os.path.exists(os.path.join(ROOT, "tests", "BUILD")):
        pytest.skip("the source tree is not here (a Bazel sandbox); tools/test.sh runs this check with pytest")
    missing, unlisted = [], []
    for root, _, files in os.walk(os.path.join(ROOT, "tests")):
        for name in sorted(files):
            if not (name.startswith("test_") and name.endswith(".py")):
                continue
            with open(os.path.join(root, name), encoding="utf-8") as f:
                if "sys.exit(pytest.main([__file__" not in f.read():
                    missing.append(name)
            with open(os.path.join(root, "BUILD"), encoding="utf-8") as f:
                text = f.read()
                if f'"{name}"' not in text and f'"{name[:-3]}"' not in text:  # By file or by target name.
                    unlisted.append(name)
    assert not missing, missing
    assert not unlisted, unlisted


def test_every_registered_keras_object_is_declared_through_the_registry():
    import keras
    from tfcompress.keras import registry
    objects = registry.custom_objects()
    known = {name for name in keras.saving.get_custom_objects() if name.startswith(registry.PACKAGE + ">")}
    assert known == set(objects)
    # Every module that declares one is in the registry's list, so loading imports it.
    declaring = set()
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    text = f.read()
                if "@register(" in text or "register_keras_serializable" in text:
                    rel = os.path.relpath(os.path.join(root, name), ROOT)[:-3].replace(os.sep, ".")
                    declaring.add(rel)
    declaring.discard("tfcompress.keras.registry")
    assert declaring == set(registry.MODULES)


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
