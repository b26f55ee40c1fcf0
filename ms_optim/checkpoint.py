"""Checkpoint files: an optimizer's (and a scheduler's) state in one file, with no pickle.

A checkpoint is a ZIP archive that NumPy's ``np.load`` also opens as an ``.npz``:

* ``checkpoint.json``: everything but the arrays (format version, the optimizer's class,
  every group's hyper-parameters, step counts, the scheduler's state, ``extra``), human
  readable: ``unzip -p run.ckpt checkpoint.json``;
* ``a0.npy``, ``a1.npy``, ...: the arrays, as host NumPy arrays, each referenced from the
  JSON by ``{"__array__": "a0", "dtype": "float32", "shape": [128, 10]}``.

Arrays are read with ``allow_pickle=False``, and the JSON is plain data, so opening a
checkpoint cannot run code. Values JSON has no word for are tagged: ``{"__tuple__": [...]}``,
``{"__dict__": [[key, value], ...]}`` (a dict whose keys are not all strings: the
optimizer's integer parameter ids), ``{"__float__": "inf"}`` (non-finite floats, so the
JSON stays standard) and ``{"__numpy__": "float32", "value": 0.1}`` (a NumPy scalar,
kept as one: ``np.float32(x)`` and ``float(x)`` promote differently).

:func:`save` writes atomically; :func:`load` checks the whole file, then loads the
optimizer and scheduler all or nothing. :func:`read` and :meth:`Checkpoint.restore` are
the two halves of :func:`load`, for a caller that must see ``extra`` before it can build
the optimizer (the demo reads its model's configuration there).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import secrets
import socket
import time
import types
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine.namespace import array_namespace, device, is_array, is_cupy, is_numpy
from .optimizer import Optimizer

__all__ = ["Checkpoint", "FORMAT", "VERSION", "load", "read", "save"]

#: the ``format`` field of every checkpoint this module writes
FORMAT = "ms_optim.checkpoint"
#: (major, minor) of the layout written. A reader refuses a newer major version; a newer
#: minor version only adds fields, which an older reader ignores.
VERSION = (1, 0)

_JSON = "checkpoint.json"
#: the demo's checkpoints before this module (format "ms_optim.demo/1"): one JSON tree in
#: this uint8 member, every dict as ``__dict__`` pairs. Read as format version 0.
_LEGACY_TREE = "__tree__.npy"
#: dtypes an array or NumPy scalar may have in a file (exact in .npy and in JSON)
_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
)
_TAGS = ("__array__", "__scalar__", "__numpy__", "__tuple__", "__dict__", "__float__")
#: a temporary of ours left by a killed writer is removed once it is this old, even when
#: its writer's process cannot be checked (another host) or its pid was reused
_STALE_AFTER_S = 24 * 3600
#: temporaries of the demo's old writer (``.ckpt-XXXXXXXX.tmp``, no owner recorded) are
#: removed once this old: that writer took well under a second per save
_LEGACY_STALE_AFTER_S = 60


# ------------------------------------------------------------------------- public


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file's contents, checked and decoded, not yet applied to anything.

    Returned by :func:`read`. Arrays are host NumPy arrays.

    Attributes:
      path: the file it was read from.
      version: ``(major, minor)`` of its format; ``(0, 0)`` for the demo's old files.
      optimizer_class: the class name of the optimizer it was saved from (None in a
        version-0 file, which did not record it).
      optimizer_state: that optimizer's ``state_dict()``.
      scheduler_class, scheduler_state: the same for the scheduler, or None if none was saved.
      extra: the ``extra`` dict given to :func:`save`.
    """

    path: str
    version: tuple[int, int]
    optimizer_class: str | None
    optimizer_state: dict
    scheduler_class: str | None
    scheduler_state: dict | None
    extra: dict = field(default_factory=dict)

    def restore(self, optimizer, scheduler=None) -> dict:
        """Load this checkpoint into ``optimizer`` (and ``scheduler``); return a copy of ``extra``.

        All or nothing: on any error the optimizer's groups and state and the
        scheduler are left exactly as they were (same objects, same bits).

        Raises:
          TypeError: ``optimizer`` is not an ms_optim Optimizer, ``scheduler`` not a
            scheduler, or a value in the file has the wrong type.
          ValueError: the file holds another optimizer or scheduler class, does not fit
            this optimizer's groups, or holds a value this optimizer or scheduler refuses.
        """
        _check_targets(optimizer, scheduler)
        where = self.path
        if self.optimizer_class is not None and self.optimizer_class != type(optimizer).__name__:
            raise ValueError(
                f"{where} holds the state of a {self.optimizer_class} optimizer; "
                f"it cannot be loaded into a {type(optimizer).__name__}"
            )
        opt_state = _checked_optimizer_state(self.optimizer_state, optimizer, where)
        sched_state = None
        if scheduler is not None:
            if self.scheduler_state is None:
                raise ValueError(f"{where} holds no scheduler state, but a {type(scheduler).__name__} was given")
            if self.scheduler_class is not None and self.scheduler_class != type(scheduler).__name__:
                raise ValueError(
                    f"{where} holds the state of a {self.scheduler_class} scheduler; "
                    f"it cannot be loaded into a {type(scheduler).__name__}"
                )
            sched_state = copy.deepcopy(self.scheduler_state)
            _check_like(sched_state, scheduler.state_dict(), f"{where}: scheduler", len(optimizer.param_groups))
        undo_optimizer = _snapshot_optimizer(optimizer)
        undo_scheduler = _snapshot_scheduler(scheduler) if scheduler is not None else None
        part = "optimizer"
        try:
            optimizer.load_state_dict(opt_state)
            if scheduler is not None:
                part = "scheduler"
                scheduler.load_state_dict(sched_state)
        except Exception as err:
            # load_state_dict promises to change nothing when it raises; restore anyway, so
            # that the promise holds for the pair (the optimizer loaded, the scheduler refused).
            undo_optimizer()
            if undo_scheduler is not None:
                undo_scheduler()
            kind = type(err) if isinstance(err, (TypeError, ValueError)) else ValueError
            detail = str(err) if kind is type(err) else f"{type(err).__name__}: {err}"
            raise kind(f"{where}: the {part} state does not load: {detail}") from err
        return copy.deepcopy(self.extra)


def save(path, optimizer, scheduler=None, extra=None) -> None:
    """Write ``optimizer``'s (and ``scheduler``'s) state and ``extra`` to ``path``, atomically.

    The file is written to a temporary beside ``path``, flushed to disk (fsync), then
    renamed over ``path``: a crash or a kill leaves either the old file or the new one,
    never a mix. A temporary left by a killed save to the same path is removed by the next
    one (only our own temporaries: named for this path, regular files of this user, whose
    writing process has gone or that are a day old).

    Args:
      path: the file to write (str or path-like); any name, ``.ckpt`` or ``.npz`` suggested.
      optimizer: an :class:`ms_optim.Optimizer`. Its arrays may live in any namespace or
        on any device; they are stored as host NumPy arrays.
      scheduler: a scheduler of that optimizer, or None.
      extra: a dict of your own (epoch, model weights, config): JSON values (NumPy scalars
        become Python numbers), tuples, and arrays of any namespace (stored as NumPy
        arrays). :func:`load` returns it.

    Raises:
      TypeError: a wrong argument, or a value that cannot be stored (its place is named).
      OSError: the file cannot be written; an older file at ``path`` is then untouched.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from ms_optim import AdamW
    >>> from ms_optim.checkpoint import load, save
    >>> w = np.ones(3)
    >>> opt = AdamW([w], lr=1e-2)
    >>> opt([w])
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
    >>> save(path, opt, extra={"epoch": 1})
    >>> load(path, AdamW([w.copy()], lr=1e-2))
    {'epoch': 1}
    """
    path = _checked_path(path)
    _check_targets(optimizer, scheduler)
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
    arrays: dict[str, np.ndarray] = {}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": list(VERSION),
        "ms_optim": _library_version(),
        "optimizer": {
            "class": type(optimizer).__name__,
            "module": type(optimizer).__module__,
            "state_dict": _encode(optimizer.state_dict(), arrays, "optimizer.state_dict", keep_numpy=True),
        },
        "scheduler": None,
        "extra": _encode(extra, arrays, "extra", keep_numpy=False),
    }
    if scheduler is not None:
        doc["scheduler"] = {
            "class": type(scheduler).__name__,
            "module": type(scheduler).__module__,
            "state_dict": _encode(scheduler.state_dict(), arrays, "scheduler.state_dict", keep_numpy=True),
        }
    text = json.dumps(doc, allow_nan=False, indent=1)
    _write_atomically(path, text, arrays)


def read(path) -> Checkpoint:
    """Read and check the checkpoint at ``path`` without applying it to anything.

    The whole file is read and decoded first: a truncated or corrupt file, a file of a
    newer major format version, a value of a kind the format does not allow (an object,
    complex or datetime array, an unknown tag) raises before anything else happens.

    Raises:
      OSError: ``path`` cannot be opened.
      ValueError / TypeError: it is not a readable ms_optim checkpoint (the message
        names the file and the field).
    """
    path = _checked_path(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path} is not an ms_optim checkpoint (not a complete zip/npz file: {err})") from None
    with zf:
        if _JSON in names:
            return _read_current(path, zf, names)
        if _LEGACY_TREE in names:
            return _read_legacy(path, zf, names)
    raise ValueError(f"{path} is not an ms_optim checkpoint (it has no {_JSON})")


def load(path, optimizer, scheduler=None) -> dict:
    """Load the checkpoint at ``path`` into ``optimizer`` (and ``scheduler``); return its ``extra``.

    Checked whole before anything changes, then applied all or nothing: a corrupt,
    truncated or mismatched file (another optimizer class, other group sizes, another
    scheduler, a bad value) raises and leaves the optimizer, its state and the scheduler
    exactly as they were. State arrays are copied into each parameter's own namespace,
    device and dtype, so a file saved from CuPy loads into NumPy parameters and back.

    Args:
      path: a file written by :func:`save`.
      optimizer: an optimizer of the class that was saved, over parameters of the same
        shapes in the same groups.
      scheduler: the scheduler to restore, of the class that was saved; None to restore
        the optimizer only (a saved scheduler state is then ignored).

    Returns:
      The ``extra`` dict given to :func:`save` (arrays as NumPy arrays).

    Raises:
      OSError: ``path`` cannot be opened.
      TypeError / ValueError: as :func:`read` and :meth:`Checkpoint.restore`.
    """
    _check_targets(optimizer, scheduler)
    return read(path).restore(optimizer, scheduler)


# ------------------------------------------------------------------- arguments


def _checked_path(path) -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}: {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must be a non-empty file name, got {path!r}")
    return path


def _check_targets(optimizer, scheduler) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an ms_optim.Optimizer, got {type(optimizer).__name__}")
    if scheduler is not None:
        from schedulers import LRScheduler  # not at import time: schedulers imports ms_optim

        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"scheduler must be a scheduler from schedulers (or None), got {type(scheduler).__name__}")
        if scheduler.optimizer is not optimizer:
            raise ValueError(f"scheduler must schedule the optimizer given; this {type(scheduler).__name__} has another")


def _library_version() -> str:
    from . import __version__

    return __version__


# -------------------------------------------------------------------- encoding


def _encode(obj, arrays: dict, where: str, *, keep_numpy: bool):
    """``obj`` as JSON data, its arrays moved to host NumPy and added to ``arrays``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _encode_float(obj)
    if isinstance(obj, np.generic):
        dtype = obj.dtype.name
        if dtype not in _DTYPES:
            raise TypeError(f"cannot store a NumPy {dtype} scalar at {where}: real numbers and bools only")
        value = obj.item()
        if not keep_numpy:
            return _encode_float(value) if isinstance(value, float) else value
        return {"__numpy__": dtype, "value": _encode_float(value) if isinstance(value, float) else value}
    if is_array(obj):
        host = _to_host(obj, where)
        if host.dtype.name not in _DTYPES:
            raise TypeError(f"cannot store an array of dtype {host.dtype} at {where}: real numbers and bools only")
        key = f"a{len(arrays)}"
        arrays[key] = host
        return {"__array__": key, "dtype": host.dtype.name, "shape": list(host.shape)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]", keep_numpy=keep_numpy) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]", keep_numpy=keep_numpy) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]", keep_numpy=keep_numpy) for k, v in obj.items()}
        pairs = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, tuple, type(None), np.generic)):
                raise TypeError(f"cannot store a dict key of type {type(k).__name__} at {where}")
            pairs.append([_encode(k, arrays, f"{where} key", keep_numpy=keep_numpy),
                          _encode(v, arrays, f"{where}[{k!r}]", keep_numpy=keep_numpy)])
        return {"__dict__": pairs}
    raise TypeError(f"cannot store a {type(obj).__name__} at {where} in a checkpoint (JSON values, tuples and arrays only)")


def _encode_float(x: float):
    if math.isfinite(x):
        return x
    return {"__float__": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


def _to_host(x, where: str) -> np.ndarray:
    """A NumPy copy of array ``x`` of any namespace and device."""
    try:
        xp = array_namespace(x)
        if is_numpy(xp):
            return np.array(x, copy=True)
        if is_cupy(xp):
            return x.get()
        try:
            return np.array(np.from_dlpack(x), copy=True)  # any device DLPack can reach
        except Exception:
            return np.array(x, copy=True)
    except Exception as err:
        raise TypeError(f"cannot copy the {type(x).__name__} at {where} to host memory: {err}") from None


# -------------------------------------------------------------------- decoding


class _Members:
    """The archive's arrays, each read (with allow_pickle=False) when first referenced."""

    def __init__(self, path: str, zf: zipfile.ZipFile, names: set[str]):
        self.path, self.zf, self.names, self.used = path, zf, names, set()

    def get(self, key, where: str) -> np.ndarray:
        if not isinstance(key, str) or f"{key}.npy" not in self.names or key.startswith("__"):
            raise ValueError(f"{self.path}: {where} refers to an array {key!r} the file does not hold")
        if key in self.used:
            raise ValueError(f"{self.path}: {where} refers to array {key!r} a second time")
        self.used.add(key)
        try:
            with self.zf.open(f"{key}.npy") as f:
                value = np.lib.format.read_array(f, allow_pickle=False)
        except Exception as err:  # a bad CRC, a truncated member, an object array, a bad header
            raise ValueError(f"{self.path}: {where}: array {key!r} cannot be read: {type(err).__name__}: {err}") from None
        if not isinstance(value, np.ndarray) or value.dtype.name not in _DTYPES:
            raise TypeError(
                f"{self.path}: {where}: array {key!r} has dtype {getattr(value, 'dtype', type(value).__name__)}; "
                "a checkpoint holds real or bool arrays only"
            )
        return value


def _decode(obj, members: _Members, where: str):
    path = members.path
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, list):
        return [_decode(v, members, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, dict):  # json gives nothing else; kept for a hand-built tree
        raise TypeError(f"{path}: {where} is a {type(obj).__name__}, not a JSON value")
    tags = [k for k in obj if k.startswith("__")]
    if not tags:
        return {k: _decode(v, members, f"{where}[{k!r}]") for k, v in obj.items()}
    tag = tags[0]
    if len(tags) > 1 or tag not in _TAGS:
        raise ValueError(f"{path}: {where} has unknown tag(s) {sorted(tags)}; known: {', '.join(_TAGS)}")
    value = obj[tag]
    if tag == "__array__":
        _expect_keys(obj, {"__array__"}, {"dtype", "shape"}, path, where)
        array = members.get(value, where)
        if "dtype" in obj and obj["dtype"] != array.dtype.name:
            raise ValueError(f"{path}: {where} declares dtype {obj['dtype']!r}, its array has {array.dtype.name}")
        if "shape" in obj and obj["shape"] != list(array.shape):
            raise ValueError(f"{path}: {where} declares shape {obj['shape']!r}, its array has {list(array.shape)}")
        return array
    if tag == "__scalar__":  # the demo's old files: a NumPy scalar as a 0-d member
        _expect_keys(obj, {"__scalar__"}, set(), path, where)
        array = members.get(value, where)
        if array.ndim != 0:
            raise ValueError(f"{path}: {where} must be a 0-d array, got shape {list(array.shape)}")
        return array[()]
    if tag == "__numpy__":
        _expect_keys(obj, {"__numpy__", "value"}, set(), path, where)
        return _decode_numpy_scalar(value, _decode(obj["value"], members, f"{where}['value']"), path, where)
    if tag == "__float__":
        _expect_keys(obj, {"__float__"}, set(), path, where)
        if value not in ("nan", "inf", "-inf"):
            raise ValueError(f"{path}: {where}: __float__ must be 'nan', 'inf' or '-inf', got {value!r}")
        return float(value)
    _expect_keys(obj, {tag}, set(), path, where)
    if not isinstance(value, list):
        raise TypeError(f"{path}: {where}: {tag} must hold a list, got {type(value).__name__}")
    if tag == "__tuple__":
        return tuple(_decode(v, members, f"{where}[{i}]") for i, v in enumerate(value))
    out = {}
    for i, pair in enumerate(value):  # __dict__
        if not isinstance(pair, list) or len(pair) != 2:
            raise TypeError(f"{path}: {where}: __dict__ entry {i} must be a [key, value] pair")
        key = _decode(pair[0], members, f"{where} key {i}")
        if isinstance(key, list):
            key = tuple(key)
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"{path}: {where}: key {i} is a {type(key).__name__}, which cannot be a dict key") from None
        if key in out:
            raise ValueError(f"{path}: {where} has the key {key!r} twice")
        out[key] = _decode(pair[1], members, f"{where}[{key!r}]")
    return out


def _expect_keys(obj: dict, required: set, optional: set, path: str, where: str) -> None:
    keys = set(obj)
    if not required <= keys or not keys <= required | optional:
        raise ValueError(f"{path}: {where} must have keys {sorted(required)} (and optionally {sorted(optional)}), got {sorted(keys)}")


def _decode_numpy_scalar(dtype, value, path: str, where: str):
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise TypeError(f"{path}: {where}: a NumPy scalar must have a real or bool dtype, got {dtype!r}")
    ok = isinstance(value, bool) if dtype == "bool" else (
        isinstance(value, (int, float)) and not isinstance(value, bool) and (dtype.startswith("float") or isinstance(value, int))
    )
    if not ok:
        raise TypeError(f"{path}: {where}: {value!r} is not a value of dtype {dtype}")
    try:
        with np.errstate(over="raise"):
            scalar = np.dtype(dtype).type(value)
    except (OverflowError, FloatingPointError, ValueError):
        raise ValueError(f"{path}: {where}: {value!r} does not fit dtype {dtype}") from None
    if not (scalar == value or (isinstance(value, float) and math.isnan(value))):
        raise ValueError(f"{path}: {where}: {value!r} is not exactly a {dtype} value")
    return scalar


def _read_current(path: str, zf: zipfile.ZipFile, names: set[str]) -> Checkpoint:
    try:
        raw = zf.read(_JSON)
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: {_JSON} is nested too deeply") from None
    except Exception as err:
        raise ValueError(f"{path}: {_JSON} cannot be read: {type(err).__name__}: {err}") from None
    if not isinstance(doc, dict):
        raise TypeError(f"{path}: {_JSON} must hold a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in version)
    ):
        raise ValueError(f"{path}: 'version' must be [major, minor], got {version!r}")
    if version[0] > VERSION[0]:
        raise ValueError(
            f"{path} was written by a newer ms_optim (checkpoint format {version[0]}.{version[1]}); "
            f"this version reads format {VERSION[0]}.x: upgrade ms_optim to load it"
        )
    if version[0] < 1:
        raise ValueError(f"{path}: unknown checkpoint format version {version!r}")
    members = _Members(path, zf, names)
    try:
        optimizer = doc.get("optimizer")
        if not isinstance(optimizer, dict):
            raise TypeError(f"{path}: 'optimizer' must be an object, got {type(optimizer).__name__}")
        opt_class, opt_state = _decode_part(optimizer, members, "optimizer")
        scheduler = doc.get("scheduler")
        if scheduler is None:
            sched_class = sched_state = None
        elif isinstance(scheduler, dict):
            sched_class, sched_state = _decode_part(scheduler, members, "scheduler")
        else:
            raise TypeError(f"{path}: 'scheduler' must be an object or null, got {type(scheduler).__name__}")
        extra = _decode(doc.get("extra", {}), members, "extra")
    except RecursionError:
        raise ValueError(f"{path}: {_JSON} is nested too deeply") from None
    if not isinstance(extra, dict):
        raise TypeError(f"{path}: 'extra' must be an object, got {type(extra).__name__}")
    return Checkpoint(path, (version[0], version[1]), opt_class, opt_state, sched_class, sched_state, extra)


def _decode_part(part: dict, members: _Members, name: str) -> tuple[str, dict]:
    path = members.path
    cls = part.get("class")
    if not isinstance(cls, str) or not cls.isidentifier():
        raise TypeError(f"{path}: '{name}.class' must be a class name, got {cls!r}")
    if "state_dict" not in part:
        raise ValueError(f"{path}: '{name}' lacks 'state_dict'")
    state = _decode(part["state_dict"], members, f"{name}.state_dict")
    if not isinstance(state, dict):
        raise TypeError(f"{path}: '{name}.state_dict' must be an object, got {type(state).__name__}")
    return cls, state


def _read_legacy(path: str, zf: zipfile.ZipFile, names: set[str]) -> Checkpoint:
    """The demo's format "ms_optim.demo/1": the run's whole tree as JSON in ``__tree__``."""
    members = _Members(path, zf, names)
    try:
        with zf.open(_LEGACY_TREE) as f:
            tree_bytes = np.lib.format.read_array(f, allow_pickle=False)
        if tree_bytes.dtype != np.uint8 or tree_bytes.ndim != 1:
            raise ValueError(f"it must be a 1-d uint8 array, got {tree_bytes.dtype} of shape {tree_bytes.shape}")
        tree = json.loads(tree_bytes.tobytes().decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: __tree__ is nested too deeply") from None
    except Exception as err:
        raise ValueError(f"{path}: __tree__ cannot be read: {type(err).__name__}: {err}") from None
    try:
        tree = _decode(tree, members, "tree")
    except RecursionError:
        raise ValueError(f"{path}: __tree__ is nested too deeply") from None
    if not isinstance(tree, dict):
        raise TypeError(f"{path}: the tree must be a dict, got {type(tree).__name__}")
    for key in ("optimizer", "scheduler"):
        if key not in tree:
            raise ValueError(f"{path}: the tree lacks {key!r}")
    opt_state, sched_state = tree["optimizer"], tree["scheduler"]
    if not isinstance(opt_state, dict):
        raise TypeError(f"{path}: tree['optimizer'] must be a dict, got {type(opt_state).__name__}")
    if sched_state is not None and not isinstance(sched_state, dict):
        raise TypeError(f"{path}: tree['scheduler'] must be a dict or None, got {type(sched_state).__name__}")
    extra = {k: v for k, v in tree.items() if k not in ("optimizer", "scheduler")}
    return Checkpoint(path, (0, 0), None, opt_state, None, sched_state, extra)


# --------------------------------------------------------- checks before loading


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, np.ndarray):
        return "array"
    return type(value).__name__


def _is_real_array(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _checked_optimizer_state(sd: dict, optimizer, path: str) -> dict:
    """``sd`` checked for what any optimizer needs; 0-d hyper-parameters moved to their
    group's namespace. The algorithm's own checks are ``load_state_dict``'s."""
    where = f"{path}: optimizer.state_dict"
    if set(sd) != {"state", "param_groups"}:
        raise ValueError(f"{where} must have exactly the keys ['param_groups', 'state'], got {sorted(map(str, sd))}")
    groups, state = sd["param_groups"], sd["state"]
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{where}['param_groups'] must be a list, got {type(groups).__name__}")
    if not isinstance(state, dict):
        raise TypeError(f"{where}['state'] must be a dict, got {type(state).__name__}")
    live = optimizer.param_groups
    if len(groups) != len(live):
        raise ValueError(f"{where} has {len(groups)} param groups; the optimizer has {len(live)}")
    ids: set[int] = set()
    new_groups = []
    for gi, group in enumerate(groups):
        gwhere = f"{where}['param_groups'][{gi}]"
        if not isinstance(group, dict) or not all(isinstance(k, str) for k in group):
            raise TypeError(f"{gwhere} must be a dict with string keys")
        pids = group.get("params")
        if not isinstance(pids, list):
            raise TypeError(f"{gwhere}['params'] must be a list of parameter ids, got {type(pids).__name__}")
        for pid in pids:
            if not isinstance(pid, int) or isinstance(pid, bool):
                raise TypeError(f"{gwhere}['params'] must hold integer ids, got {pid!r}")
            if pid in ids:
                raise ValueError(f"{gwhere}['params'] lists parameter id {pid} a second time")
            ids.add(pid)
        if len(pids) != len(live[gi]["params"]):
            raise ValueError(
                f"{gwhere} has {len(pids)} params, the optimizer's group {gi} has {len(live[gi]['params'])}: "
                "not a checkpoint of this model"
            )
        like = live[gi]["params"][0] if live[gi]["params"] else None
        new = {}
        for key, value in group.items():
            if key != "params":
                value = _checked_hyper(value, f"{gwhere}[{key!r}]", like, key)
            new[key] = value
        new_groups.append(new)
    for pid, st in state.items():
        swhere = f"{where}['state'][{pid!r}]"
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise TypeError(f"{where}['state'] keys must be integer parameter ids, got {pid!r}")
        if pid not in ids:
            raise ValueError(f"{swhere} is the state of a parameter id no group lists")
        if not isinstance(st, dict) or not all(isinstance(k, str) for k in st):
            raise TypeError(f"{swhere} must be a dict with string keys")
        for key, value in st.items():
            # LBFGS keeps lists of history vectors and numbers (its 'al' has None slots, as torch's)
            entries = value if isinstance(value, list) else [value]
            for k, entry in enumerate(entries):
                ewhere = f"{swhere}[{key!r}]" + (f"[{k}]" if isinstance(value, list) else "")
                if isinstance(entry, np.ndarray):
                    if not (_is_real_array(entry) or (key == "step" and entry.ndim == 0 and entry.dtype.kind in "iuf")):
                        raise TypeError(f"{ewhere} has dtype {entry.dtype}; state arrays must be real floating")
                elif _kind(entry) != "number" and not (entry is None and isinstance(value, list)):
                    raise TypeError(f"{ewhere} must be an array or a number, got {type(entry).__name__}: {entry!r}")
    return {"state": state, "param_groups": new_groups}


#: keys schedulers write into param groups, which no optimizer's checks cover
_SCHEDULER_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def _checked_hyper(value, where: str, like, key=None):
    """A hyper-parameter as stored; a 0-d array goes to the namespace and device of ``like``."""
    if key in _SCHEDULER_GROUP_KEYS:
        number = float(value) if _kind(value) in ("number", "array") and np.ndim(value) == 0 else None
        if number is None:
            raise TypeError(f"{where} must be a real number, got {type(value).__name__}: {value!r}")
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    if isinstance(value, (list, tuple)):
        out = [_checked_hyper(v, f"{where}[{i}]", like) for i, v in enumerate(value)]
        return tuple(out) if isinstance(value, tuple) else out
    if isinstance(value, dict):
        raise TypeError(f"{where} must be a number, bool, string or null, got a dict")
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind != "f":
            raise TypeError(
                f"{where} is an array of dtype {value.dtype} and shape {list(value.shape)}; "
                "an array hyper-parameter must be a 0-d real floating array"
            )
        if like is not None:
            xp = array_namespace(like)
            return xp.asarray(value, device=device(like), copy=True)
    return value


#: fields every scheduler's state has (LRScheduler's), checked here whatever the class
def _check_base_fields(state: dict, where: str, n_groups: int) -> None:
    for key in ("base_lrs", "_last_lr"):
        if key in state:
            lrs = state[key]
            if len(lrs) != n_groups:
                raise ValueError(f"{where}[{key!r}] has {len(lrs)} values for {n_groups} param groups")
            for i, v in enumerate(lrs):
                if not (math.isfinite(v) and v >= 0):
                    raise ValueError(f"{where}[{key!r}][{i}] must be a finite lr >= 0, got {v!r}")
    if "last_epoch" in state:
        v = state["last_epoch"]
        if not (math.isfinite(v) and v >= -1):
            raise ValueError(f"{where}['last_epoch'] must be a finite number >= -1, got {v!r}")
    if "_step_count" in state:
        v = state["_step_count"]
        if not (isinstance(v, (int, np.integer)) and v >= 0):
            raise ValueError(f"{where}['_step_count'] must be an int >= 0, got {v!r}")


def _check_like(saved, live, where: str, n_groups: int) -> None:
    """``saved`` has the shape of the live scheduler's state: same keys, same kinds of values.

    What each value means is the scheduler's ``load_state_dict``'s to check.
    """
    ks, kl = _kind(saved), _kind(live)
    if ks != kl:
        raise TypeError(f"{where} is a {ks} ({saved!r:.60}), the scheduler has a {kl} there")
    if ks == "number" and isinstance(saved, (float, np.floating)) and math.isnan(saved):
        raise ValueError(f"{where} is NaN")
    if ks == "list":
        if len(saved) == len(live):
            for i, (s, v) in enumerate(zip(saved, live)):
                _check_like(s, v, f"{where}[{i}]", n_groups)
        elif live:
            for i, s in enumerate(saved):
                _check_like(s, live[0], f"{where}[{i}]", n_groups)
    if ks == "dict":
        # '_class' (the scheduler class that wrote the state) is newer than the demo's old files
        missing, unknown = set(live) - set(saved) - {"_class"}, set(saved) - set(live)
        if missing or unknown:
            raise ValueError(
                f"{where} does not match this scheduler's state: "
                + "; ".join(
                    part
                    for part in (
                        f"lacks {sorted(map(str, missing))}" if missing else "",
                        f"has unexpected {sorted(map(str, unknown))}" if unknown else "",
                    )
                    if part
                )
            )
        for k in saved:
            _check_like(saved[k], live[k], f"{where}[{k!r}]", n_groups)
        if "last_epoch" in saved or "base_lrs" in saved:
            _check_base_fields(saved, where, n_groups)


# ------------------------------------------------------------ undo on failure


def _snapshot_optimizer(optimizer):
    """A function that puts back the optimizer's groups and state (same objects)."""
    groups = [(g, dict(g)) for g in optimizer.param_groups]
    state = [(p, st) for p, st in optimizer.state.items()]

    def undo():
        for g, saved in groups:
            g.clear()
            g.update(saved)
        optimizer.state.clear()
        for p, st in state:
            optimizer.state[p] = st

    return undo


def _snapshot_scheduler(scheduler):
    """A function that puts back every attribute of ``scheduler`` and of the schedulers it holds."""
    from schedulers import LRScheduler

    objects: dict[int, Any] = {}

    def walk(obj):
        if id(obj) in objects:
            return
        objects[id(obj)] = obj
        for value in vars(obj).values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, Optimizer):
                    continue  # restored by the optimizer's own snapshot, never replaced
                if isinstance(item, LRScheduler):
                    walk(item)
                elif callable(item) and hasattr(item, "__dict__") and not isinstance(item, (type, types.FunctionType)):
                    objects.setdefault(id(item), item)  # a callable lr_lambda whose __dict__ a load updates

    walk(scheduler)
    memo = {id(o): o for o in objects.values()}
    for o in list(objects.values()):
        opt = getattr(o, "optimizer", None)
        if opt is not None:
            memo[id(opt)] = opt
    saved = [(o, copy.deepcopy(dict(vars(o)), dict(memo))) for o in objects.values()]

    def undo():
        for o, attrs in saved:
            vars(o).clear()
            vars(o).update(attrs)

    return undo


# ---------------------------------------------------------------- writing


def _write_atomically(path: str, text: str, arrays: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temporaries(directory, base)
    host = _hostname()
    while True:
        tmp = os.path.join(directory, f"{_temp_prefix(base)}{host}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            # O_EXCL: never reuse a name; mode 0o666 lets the umask decide, as for any new file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                zf.writestr(_JSON, text)
                for key, array in arrays.items():
                    with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_prefix(base: str) -> str:
    # The target's name keeps "ours for this path" decidable; cut so the whole name stays
    # under the 255 bytes most file systems allow.
    return f".{base[:120]}.ckpt-"


def _hostname() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process, or we cannot tell: keep the file
    return True


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove temporaries a killed save left beside ``base``: only ours, only stale ones."""
    ours = re.compile(re.escape(_temp_prefix(base)) + r"(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp")
    legacy = re.compile(r"\.ckpt-[a-z0-9_]{8}\.tmp")  # the demo's old writer (tempfile.mkstemp)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now, host = time.time(), _hostname()
    for name in names:
        mine, old_style = ours.fullmatch(name), legacy.fullmatch(name)
        if not (mine or old_style):
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not _is_plain_file_of_ours(st):
            continue
        age = now - st.st_mtime
        if mine:
            gone = mine["host"] == host and not _pid_alive(int(mine["pid"]))
            stale = gone or age > _STALE_AFTER_S
        else:
            stale = age > _LEGACY_STALE_AFTER_S and _looks_like_zip(full)
        if stale:
            try:
                os.unlink(full)
            except OSError:
                pass


def _is_plain_file_of_ours(st) -> bool:
    import stat

    if not stat.S_ISREG(st.st_mode):
        return False
    getuid = getattr(os, "getuid", None)
    return getuid is None or st.st_uid == getuid()


def _looks_like_zip(path: str) -> bool:
    """A temporary of the old writer is empty or starts as a zip: never remove anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"", b"PK\x03\x04")
