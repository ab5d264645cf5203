"""The on-disk spec cache: an inferred spec is kept as JSON per architecture, so that the next process
aligning the same architecture skips `torch.export` (0.1-0.4 s per model, more than a small
alignment takes).

A spec is reused only for the same model class, module tree, tensor shapes, input shapes and
inference options (`infer._cache_key`), the same registered rules, and the same code: the key stamps
modefuse's files and every imported Python file outside the standard library and site-packages (size
and modification time), and the versions of torch and of the packages defining the model's modules,
so editing a model's code or a helper it calls, or upgrading torch or transformers, starts afresh.
Location: `$MODEFUSE_CACHE_DIR/specs` (default `~/.cache/modefuse/specs`, under `$XDG_CACHE_HOME` if
set); `MODEFUSE_CACHE_DIR=off` turns it off. Entries are JSON written atomically; one that cannot be
read is ignored and rewritten.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

import torch

from ..storage.atomic import write_text
from ..errors import ModefuseError
from .permutation_spec import PermutationSpec

MAX_ENTRIES = 256
_STDLIB = tuple(os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib"))
_SITE = tuple(os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("purelib", "platlib"))


def cache_dir() -> Path | None:
    """Where specs are kept, or None when the cache is off."""
    env = os.environ.get("MODEFUSE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env) / "specs"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modefuse" / "specs"


def _code_stamp(model) -> str:
    """A digest of the code a spec depends on: modefuse's and the user's own files (every imported module
    outside the standard library and site-packages: size and mtime), and the versions of torch and of the
    installed packages that define the model's module classes."""
    h = hashlib.sha1(f"torch {torch.__version__}".encode())
    tops = {c.__module__.split(".")[0] for m in model.modules() for c in type(m).__mro__}
    for top in sorted(tops - {"builtins"}):
        h.update(f"{top} {getattr(sys.modules.get(top), '__version__', '')};".encode())
    h.update(_files_stamp(tuple(map(id, sys.modules.values()))).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _files_stamp(modules: tuple[int, ...]) -> str:
    """The files part of the stamp: size and mtime of modefuse's files and of every imported module's outside
    the standard library and site-packages. Kept per set of imported module objects (`modules`, their ids):
    an import or a re-import since the last call computes it again."""
    own = Path(__file__).parents[1]  # the whole modefuse package
    files = [str(p) for p in own.rglob("*.py")] + [
        f for mod in list(sys.modules.values()) if (f := getattr(mod, "__file__", None))
        and f.endswith(".py") and not f.startswith(_STDLIB + _SITE)]
    stamps = []
    for f in sorted(set(files)):
        try:
            st = os.stat(f)
        except OSError:
            continue
        stamps.append(f"{f}:{st.st_size}:{st.st_mtime_ns};")
    return "".join(stamps)


def entry_key(arch_key: str, model) -> str:
    """The file name of an architecture's entry: its key and the code it was inferred with."""
    return hashlib.sha1(f"{arch_key}|{_code_stamp(model)}".encode()).hexdigest()


def load(key: str) -> tuple[PermutationSpec, list[str]] | None:
    """The cached spec and the warnings inference gave for it, or None (absent, off, or unreadable)."""
    d = cache_dir()
    if d is None:
        return None
    try:
        entry = json.loads((d / f"{key}.json").read_text())
        spec = PermutationSpec.from_json(entry["spec"])
        warns = [str(w) for w in entry["warnings"]]
    except (OSError, ValueError, KeyError, TypeError, ModefuseError):
        return None
    return spec, warns


def store(key: str, spec: PermutationSpec, warns: list[str]) -> None:
    """Keep `spec` (best effort: a cache that cannot be written is skipped); prune to the newest entries."""
    d = cache_dir()
    if d is None:
        return
    try:
        write_text(d / f"{key}.json", json.dumps({"spec": spec.to_json(), "warnings": warns}))
        entries = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in entries[:-MAX_ENTRIES]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def clear() -> int:
    """Delete every cached spec; returns how many there were."""
    d = cache_dir()
    if d is None or not d.is_dir():
        return 0
    n = 0
    for p in d.glob("*.json"):
        p.unlink(missing_ok=True)
        n += 1
    return n
