"""Compile once, across processes: the cpu backend's disk cache of generated kernels.

The emitted source is written to a module file named by its hash (in
``$MS_OPTIM_CACHE_DIR/cpu-kernels``, default ``~/.cache/ms_optim/cpu-kernels``,
one folder per version of the code generator) and compiled with
``cache=True``, so numba stores the machine code beside it and a later
process loads it instead of compiling. When the folder cannot be written the
kernel is compiled in memory (``MS_OPTIM_CPU_DISK_CACHE=0`` forces that);
deleting the folder only costs a recompile. A file is replaced atomically, so
two processes compiling the same kernel never see half a file.

What a compile and a cache load cost is measured by
``benchmarks/bench_cpu.py`` (its "first step" column, cold and warm).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from .cpu_codegen import codegen_version

__all__ = ["cache_dir", "load_module"]




def cache_dir() -> Path | None:
    """Where generated kernel modules (and numba's cache of them) live; None: in memory only."""
    if os.environ.get("MS_OPTIM_CPU_DISK_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = os.environ.get("MS_OPTIM_CACHE_DIR")
    if root:
        return Path(root) / "cpu-kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ms_optim" / "cpu-kernels"


def load_module(source_for: Callable[[bool], str]):
    """Import the generated module from the disk cache, or from memory when that fails."""
    directory = cache_dir()
    if directory is not None:
        source = source_for(True)
        name = "ms_optim_cpu_" + hashlib.sha256(source.encode()).hexdigest()[:20]
        directory = directory / codegen_version().split()[-1]  # one folder per emitter version
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{name}.py"
            if not path.exists() or path.read_text() != source:
                # atomic: a concurrent process sees the old file or the whole new one
                fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    f.write(source)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        except Exception:  # read-only home, no locator numba accepts...: compile in memory
            sys.modules.pop(name, None)
    source = source_for(False)
    name = "ms_optim_cpu_mem_" + hashlib.sha256(source.encode()).hexdigest()[:20]
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return _Namespace(namespace)


class _Namespace:
    """A generated module compiled in memory (no disk cache)."""

    def __init__(self, d):
        self.__dict__.update(d)

