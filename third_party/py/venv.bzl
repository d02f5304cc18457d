"""A repository rule that points Bazel's Python toolchain at the project's virtualenv.

The interpreter path must be absolute, and the clone can live anywhere, so it
is computed from the workspace root when the repository is set up (no
download).  Run `tools/setup.sh` first to create .venv.
"""

def _venv_python_impl(ctx):
    root = str(ctx.path(Label("//:WORKSPACE")).dirname)
    python = root + "/.venv/bin/python3"
    if not ctx.path(python).exists:
        fail("no virtualenv at %s: run tools/setup.sh first" % python)
    ctx.file("BUILD", """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(python = python))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    local = True,
)
