"""Read ``.pth`` files without ever executing pickled code.

First ``torch.load(weights_only=True)``. What it refuses (published files carry numpy scalars and
arrays in ``meta``; training files of the reference carry its own classes in ``message_hub``) is
read again with a restricted unpickler: tensors, plain containers and numpy's own reconstruction
functions are allowed; every other global becomes an inert :class:`Placeholder` that records its
arguments and never runs anything.
"""
from __future__ import annotations

import os
import pickle
import types
from typing import Any, Dict, Tuple

import torch

from ..errors import CheckpointError

# (module, name) pairs the restricted unpickler may resolve to the real object. Everything a
# checkpoint needs to rebuild tensors and numpy values; nothing that can run arbitrary code.
_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    # pickle protocol 2 (torch.save's default) writes bytes as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): __import__("_codecs").encode,
}
for _dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
               torch.int16, torch.int8, torch.uint8, torch.bool):
    _ALLOWED[("torch", str(_dtype).split(".")[1])] = _dtype


def _numpy_allowed() -> Dict[Tuple[str, str], Any]:
    """numpy's own reconstruction functions, under both module names numpy has pickled them as."""
    import numpy as np

    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.core.multiarray._reconstruct
    scalar = np.float64(1.0).__reduce__()[0]  # numpy.core.multiarray.scalar
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    # dtype classes, pickled by numpy >= 1.25 as numpy.dtypes.Float64DType etc.
    for name in dir(getattr(np, "dtypes", object())):
        if name.endswith("DType"):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return allowed


class Placeholder:
    """Base of the stand-ins for classes and functions the restricted unpickler will not import.

    For each refused global the unpickler makes a subclass named after it. Instantiating one
    (pickle's REDUCE/NEWOBJ) or setting its state only records the data, so an object of the
    reference's own classes loads as inert data and a payload such as ``os.system`` never runs.
    """

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded the arguments; nothing else may happen

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Container opcodes (APPENDS, SETITEMS) on a stand-in for a list or dict subclass.
    def append(self, item: Any) -> None:
        self.args = self.args + (item,)

    def extend(self, items: Any) -> None:
        self.args = self.args + tuple(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.kwargs[key] = value

    def __repr__(self) -> str:
        return f"<unloaded {self.qualified_name}>"


_placeholders: Dict[Tuple[str, str], type] = {}


def _placeholder(module: str, name: str) -> type:
    key = (module, name)
    if key not in _placeholders:
        _placeholders[key] = type(name.split(".")[-1], (Placeholder,),
                                  {"qualified_name": f"{module}.{name}", "__module__": "knet.unloaded"})
    return _placeholders[key]


class _RestrictedUnpickler(pickle.Unpickler):
    _numpy: Dict[Tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if not _RestrictedUnpickler._numpy:
            _RestrictedUnpickler._numpy = _numpy_allowed()
        if key in _RestrictedUnpickler._numpy:
            return _RestrictedUnpickler._numpy[key]
        return _placeholder(module, name)


# torch.load takes a "pickle module": anything with Unpickler and load.
_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
    __name__="knet_restricted_pickle",
)


def safe_load(path: os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a ``.pth`` file as data only; raises CheckpointError naming the file on failure."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # it holds globals weights_only refuses: read it again with the restricted unpickler
    except Exception as err:  # truncated zip, not a torch file at all, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
