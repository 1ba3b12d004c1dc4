"""Save and load one accumulator / capture state dict as ONE safetensors file (no pickle).

Every reducer, streaming probe capture, analysis accumulator and :class:`~tlprobes.Result` has
``state_dict()`` (values: tensors, or JSON-able Python values: int, float, str, bool, None, and
lists, tuples and ``str``-keyed dicts of those and of tensors) and ``from_state_dict(state)``.
:func:`save_state` writes such a dict as one safetensors file: each tensor under its dotted path,
everything else as JSON in the file's metadata (key ``"tlprobes.state"``); :func:`load_state`
gives back an equal dict (tensors bitwise, same dtype and shape; tuples stay tuples)::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> state = {"n": 3, "sums": {"x": torch.arange(4.0)}, "layers": (0, 2), "note": None}
    >>> path = save_state(Path(tempfile.mkdtemp()) / "acc.safetensors", state)
    >>> back = load_state(path)
    >>> back["layers"], back["sums"]["x"].tolist(), back["n"]
    ((0, 2), [0.0, 1.0, 2.0, 3.0], 3)

The write is atomic (a temporary file in the same folder, then a rename), so a reader never sees
half a file.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._errors import ArgumentError, ResultsError

__all__ = ["save_state", "load_state", "encode_state", "decode_state", "states_equal", "check_kind",
           "stateful", "state_class", "FORMAT"]

#: The metadata key that holds the JSON part of a state.
FORMAT = "tlprobes.state"
_VERSION = 1
_TAGS = ("$tensor", "$tuple", "$dict")
_DTYPES = (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
)


def check_kind(state: Any, cls: type) -> None:
    """Raise :class:`~tlprobes.errors.ResultsError` unless ``state`` was written by
    ``cls.state_dict`` (its ``"kind"`` is the class name)."""
    kind = state.get("kind") if isinstance(state, Mapping) else None
    if kind != cls.__name__:
        raise ResultsError(
            f"not a {cls.__name__} state: its 'kind' is {kind!r}; valid: {cls.__name__!r}"
        )


#: Classes whose states :func:`state_class` can rebuild, by name (filled by :func:`stateful`).
_CLASSES: dict[str, type] = {}


def stateful(cls: type) -> type:
    """Class decorator: register ``cls`` so a saved state naming its ``kind`` can be rebuilt."""
    _CLASSES[cls.__name__] = cls
    return cls


def state_class(kind: Any) -> type:
    """The registered class named ``kind`` (the capture classes register on import)."""
    if kind not in _CLASSES:  # the capture classes register themselves when their package loads
        importlib.import_module("tlprobes.capture")

    if kind not in _CLASSES:
        raise ResultsError(f"unknown state kind {kind!r}; valid: {', '.join(sorted(_CLASSES))}")
    return _CLASSES[kind]


def _escape(key: str) -> str:
    """A dict key as one segment of a dotted tensor name (``%`` and ``.`` escaped)."""
    return key.replace("%", "%25").replace(".", "%2E")


def encode_state(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a state dict into ``(tensors by dotted path, JSON skeleton)``.

    Raises :class:`~tlprobes.errors.ArgumentError` (a ``TypeError``) naming the key and the type
    of any value that is neither a tensor nor JSON-able.
    """
    if not isinstance(state, Mapping):
        raise ArgumentError(f"a state must be a dict, got {type(state).__name__}")
    tensors: dict[str, Tensor] = {}

    def enc(v: Any, path: str) -> Any:
        where = path or "<root>"
        if isinstance(v, Tensor):
            if v.dtype not in _DTYPES:
                raise ArgumentError(
                    f"state value {where!r} is a tensor of dtype {v.dtype}, which safetensors "
                    f"cannot hold; valid dtypes: {', '.join(str(d) for d in _DTYPES)}"
                )
            if v.layout != torch.strided:
                raise ArgumentError(
                    f"state value {where!r} is a {v.layout} tensor; valid: dense (strided) tensors"
                )
            tensors[path] = v
            return {"$tensor": path}
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, (list, tuple)):
            items = [enc(x, f"{path}.{i}" if path else str(i)) for i, x in enumerate(v)]
            return {"$tuple": items} if isinstance(v, tuple) else items
        if isinstance(v, Mapping):
            out: dict[str, Any] = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ArgumentError(
                        f"state key {k!r} under {where!r} is a {type(k).__name__}; dict keys "
                        "must be str"
                    )
                out[k] = enc(x, f"{path}.{_escape(k)}" if path else _escape(k))
            return {"$dict": out} if any(k.startswith("$") for k in out) else out
        raise ArgumentError(
            f"state value {where!r} has type {type(v).__name__}; valid: torch.Tensor, int, float, "
            "str, bool, None, or lists / tuples / str-keyed dicts of those"
        )

    skeleton = enc(dict(state), "")
    return tensors, skeleton


def decode_state(
    tensors: Mapping[str, Tensor], skeleton: Any, *, where: str = "state"
) -> dict[str, Any]:
    """Rebuild a state dict from :func:`encode_state`'s two parts (refusing unknown value tags)."""
    used: set[str] = set()

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if isinstance(v, dict):
            tagged = [k for k in v if k.startswith("$")]
            if not tagged:
                return {k: dec(x) for k, x in v.items()}
            if len(v) != 1 or tagged[0] not in _TAGS:
                raise ResultsError(
                    f"{where}: unknown value type {sorted(v)!r} in the saved state; valid tags: "
                    f"{', '.join(_TAGS)} (the file was not written by tlprobes.save_state)"
                )
            tag, body = tagged[0], v[tagged[0]]
            if tag == "$tensor":
                if not isinstance(body, str) or body not in tensors:
                    raise ResultsError(f"{where}: tensor {body!r} is named in the metadata but "
                                       "missing from the file")
                used.add(body)
                return tensors[body]
            if tag == "$tuple":
                if not isinstance(body, list):
                    raise ResultsError(
                        f"{where}: '$tuple' holds a {type(body).__name__}, not a list"
                    )
                return tuple(dec(x) for x in body)
            if not isinstance(body, dict):
                raise ResultsError(f"{where}: '$dict' holds a {type(body).__name__}, not a dict")
            return {k: dec(x) for k, x in body.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise ResultsError(f"{where}: unknown value {v!r} in the saved state")  # pragma: no cover

    out = dec(skeleton)
    extra = sorted(set(tensors) - used)
    if extra:
        raise ResultsError(f"{where}: tensors {extra[:4]} are in the file but not in its metadata")
    if not isinstance(out, dict):
        raise ResultsError(f"{where}: the saved state is a {type(out).__name__}, not a dict")
    return out


def _host(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors; those sharing memory are copied (safetensors refuses
    shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.numel():
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()
            seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[k] = t
    return out


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` as one safetensors file at ``path`` (atomically) and return the path."""
    from safetensors.torch import save

    tensors, skeleton = encode_state(state)
    meta = json.dumps({"version": _VERSION, "state": skeleton}, allow_nan=True, sort_keys=False)
    data = save(_host(tensors), metadata={FORMAT: meta})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (a safetensors file; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"no state file at {str(path)!r}")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, OSError) as err:
        raise ResultsError(f"{str(path)!r} is not a safetensors file: {err}") from None
    raw = (header.get("__metadata__") or {}).get(FORMAT)
    if raw is None:
        raise ResultsError(
            f"{str(path)!r} is a safetensors file without a {FORMAT!r} metadata entry; it was "
            "not written by tlprobes.save_state"
        )
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise ResultsError(f"{str(path)!r}: the {FORMAT!r} metadata is not JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("version") != _VERSION or "state" not in meta:
        got = meta.get("version") if isinstance(meta, dict) else meta
        raise ResultsError(
            f"{str(path)!r}: unsupported state format {got!r}; valid: version {_VERSION}"
        )
    return decode_state(tensors, meta["state"], where=str(path))


def states_equal(a: Any, b: Any) -> bool:
    """True when two states are equal: tensors bitwise (dtype and shape too), the rest by ``==``
    (NaN equal to NaN)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        bits = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
        return bool(torch.equal(bits[0], bits[1]))
    if type(a) is not type(b):
        return False
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)
