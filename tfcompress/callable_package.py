"""Packages that are also the public API function of the same name.

`tfcompress.prune` is a package (`tfcompress.prune.filters`, ...) and
`tfc.prune(...)` is the prune job.  Python binds a subpackage to its parent's
attribute once it is imported, so a plain function of that name would be
replaced; instead the package itself is made callable and calls the job,
which is imported only then (a method package never imports the API layer).
"""

import importlib
import sys
import types


class CallablePackage(types.ModuleType):
    """A package module whose call runs the API function it names."""

    def __call__(self, *args, **kwargs):
        module, name = self.__dict__["_api_function"]
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def make_callable(package: str, module: str, function: str) -> None:
    """Makes the package `package` call `module.function` (both dotted names) when called."""
    package_module = sys.modules[package]
    package_module._api_function = (module, function)  # pylint: disable=protected-access
    package_module.__doc__ = (package_module.__doc__ or "").rstrip() + (
        f"\n\nCalled as `tfcompress.{package.rsplit('.', 1)[-1]}(...)`, it runs `{module}.{function}`.\n")
    package_module.__class__ = CallablePackage
