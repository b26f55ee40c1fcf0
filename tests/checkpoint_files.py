"""Editing checkpoint files as a user (or a bad disk) might: for the corruption tests.

A checkpoint is a zip of ``checkpoint.json`` and ``.npy`` members; ``edit`` rewrites one with
a function applied to the parsed JSON and the arrays, without going through ms_optim, so
that files ms_optim would never write can be made.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np


def read_raw(path):
    """``(doc, arrays)``: the parsed checkpoint.json and every array member by key."""
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("checkpoint.json"))
        arrays = {}
        for name in zf.namelist():
            if name.endswith(".npy"):
                with zf.open(name) as f:
                    arrays[name[:-4]] = np.lib.format.read_array(f, allow_pickle=True)
    return doc, arrays


def write_raw(path, doc, arrays, *, json_text=None):
    """Write ``doc`` and ``arrays`` as a checkpoint zip (object arrays included, on purpose)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("checkpoint.json", json_text if json_text is not None else json.dumps(doc))
        for key, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, allow_pickle=True)
            zf.writestr(f"{key}.npy", buf.getvalue())


def edit(src, dst, change):
    """Copy checkpoint ``src`` to ``dst`` with ``change(doc, arrays)`` applied (in place)."""
    doc, arrays = read_raw(src)
    change(doc, arrays)
    write_raw(dst, doc, arrays)


def array_ref(node):
    """The member key of an ``{"__array__": key, ...}`` node."""
    assert isinstance(node, dict) and "__array__" in node, node
    return node["__array__"]


def state_entries(doc):
    """The optimizer's per-parameter state dicts in ``doc`` (JSON nodes, editable)."""
    return [pair[1] for pair in doc["optimizer"]["state_dict"]["state"]["__dict__"]]


def replace_array(doc, arrays, node, value):
    """Point ``node`` (an ``__array__`` node) at a new member holding ``value``, declared as it is."""
    key = array_ref(node)
    arrays[key] = value
    node["dtype"] = value.dtype.name
    node["shape"] = list(value.shape)
