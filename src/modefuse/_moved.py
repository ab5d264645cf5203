"""The module paths before the packages by concern, kept for one release with a DeprecationWarning.

`import modefuse.transport` (say) gives a stand-in that forwards to `modefuse.spec.transport`. The old
modules named like a public function (`modefuse.align`, `fuse`, `interpolate`, `plane`, `repair`) are
not kept: importing them would replace the function on the package.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "atomic": "storage.atomic", "statedict": "storage.statedict", "lazystate": "storage.lazystate",
    "models": "zoo.models", "data": "zoo.data", "batching": "zoo.batching", "checkpoint": "zoo.checkpoint",
    "training": "zoo.training", "trained": "zoo.train_or_load",
    "infer": "spec.infer", "rules": "spec.rules", "dims": "spec.dims", "units": "spec.units",
    "transport": "spec.transport", "speccache": "spec.cache",
    "scoreterms": "match.scoreterms", "blockmatch": "match.blockmatch", "solvers": "match.solvers",
    "probe": "match.probe", "bn": "merge.bn", "curves": "landscape.curves", "attack": "landscape.attack",
    "textdata": "hf.textdata", "plots": "landscape.plots", "flower": "federated.flower", "experiments.curves_exp": "experiments.curves",
}


class _Forward(types.ModuleType):
    """An old module path: every attribute read from the module now at `target`."""

    def __init__(self, name: str, target: str):
        super().__init__(name)
        self.__dict__["_target"] = target

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self.__dict__["_target"]), attr)

    def __setattr__(self, attr, value):  # a test's monkeypatch reaches the real module
        if attr.startswith("__"):
            super().__setattr__(attr, value)
        else:
            setattr(importlib.import_module(self.__dict__["_target"]), attr, value)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        old = name.removeprefix("modefuse.")
        if name.startswith("modefuse.") and old in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        new = "modefuse." + MOVED[spec.name.removeprefix("modefuse.")]
        warnings.warn(f"{spec.name} moved to {new}; the old path is kept for one release", DeprecationWarning,
                      stacklevel=2)
        return _Forward(spec.name, new)

    def exec_module(self, module):
        importlib.import_module(module.__dict__["_target"])


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
