"""Turn "a capture or (array, mask)" into float64 numpy arrays and a bool mask.

Every analyzer calls :func:`as_states` (or :func:`as_array`) first, so each accepts plain numpy
arrays, torch tensors and capture objects alike::

    >>> import numpy as np
    >>> x = as_states(np.zeros((3, 2, 4, 8)))
    >>> x.values.shape, x.mask.shape, bool(x.mask.all())
    ((3, 2, 4, 8), (2, 4), True)

Capture objects are duck-typed: anything with the named array attribute (``resid``, ``attn_out``,
``angle``...) plus ``mask`` and optionally ``positions``, ``attention_mask``, ``str_tokens`` and
``meta`` (with ``mode`` and ``to_dict()``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import InputError

__all__ = [
    "States", "as_array", "as_states", "first_token_mask", "included_mask", "last_token_mask",
    "warn_nan",
]


def as_array(x: Any, *, dtype: Any = np.float64) -> np.ndarray:
    """``x`` (numpy, torch or nested lists) as a numpy array in ``dtype``; not a copy when ``x``
    already is one, so callers must not write into the result."""
    if hasattr(x, "detach"):  # torch tensor; torch itself is never imported here
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.double()  # also covers bfloat16, which numpy cannot hold
        x = t.numpy()
    return np.asarray(x, dtype=dtype) if dtype is not None else np.asarray(x)


@dataclass(frozen=True, eq=False)
class States:
    """Float64 values ``[layer, batch, pos, ...]``, a bool mask ``[batch, pos]`` and provenance."""

    values: np.ndarray
    mask: np.ndarray
    positions: np.ndarray | None = None
    attention_mask: np.ndarray | None = None
    str_tokens: list[list[str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: np.ndarray | None = None
    row_width: np.ndarray | None = None
    final_norm: Any = None

    @property
    def mode(self) -> str:
        return str(self.meta.get("mode", "unknown"))


def _meta_dict(obj: Any) -> dict[str, Any]:
    meta = getattr(obj, "meta", None)
    if meta is None:
        return {}
    if hasattr(meta, "to_dict"):
        return dict(meta.to_dict())
    if isinstance(meta, dict):
        return dict(meta)
    return {k: getattr(meta, k) for k in ("mode", "model_name", "tl_version") if hasattr(meta, k)}


def as_states(
    data: Any,
    mask: Any = None,
    *,
    attr: str = "resid",
    vector: bool = True,
    mode: str | None = None,
) -> States:
    """Read ``data`` (capture or array) into :class:`States`.

    Arrays: ``[layer, batch, pos, d]`` (``vector=True``) or ``[layer, batch, pos]``
    (``vector=False``); one dimension fewer means a single sequence (batch of one).
    ``mask`` is ``[batch, pos]`` (True = valid); ``None`` means all valid.
    """
    extra: dict[str, Any] = {}
    if type(data).__name__ == "ActivationCache":  # a TransformerLens cache: see tlprobes.from_cache
        from .._tl.interop import capture_from_cache

        data = capture_from_cache(data, attr, mask=mask)
    if hasattr(data, attr) and not hasattr(data, "shape"):
        cap = data
        values = getattr(cap, attr)
        if values is None:
            raise InputError(f"the capture has no {attr!r} values (it is None); capture that site")
        if mask is None:
            mask = getattr(cap, "mask", None)
        for name in ("positions", "attention_mask"):
            v = getattr(cap, name, None)
            extra[name] = None if v is None else as_array(v, dtype=None)
        extra["str_tokens"] = getattr(cap, "str_tokens", None)
        for name in ("tokens", "row_width"):
            v = getattr(cap, name, None)
            extra[name] = None if v is None else as_array(v, dtype=None)
        meta = _meta_dict(cap)
        if hasattr(cap, "final_state"):
            meta.setdefault("final_state", cap.final_state)
        protocol = getattr(cap, "protocol", None)
        if protocol:
            meta["protocol"] = dict(protocol)
        extra["final_norm"] = getattr(cap, "final_norm", None)
    elif hasattr(data, "shape") or isinstance(data, (list, tuple)):
        values = data
        meta = {}
    else:
        raise InputError(
            f"expected a capture with a {attr!r} attribute or an array, got {type(data).__name__}"
        )
    vals = as_array(values)
    want = 4 if vector else 3
    if vals.ndim == want - 1:
        vals = vals[:, None]
        if mask is not None:
            mask = as_array(mask, dtype=bool)[None]
    if vals.ndim != want:
        raise InputError(
            f"expected {want} dims [layer, batch, pos{', d_model' if vector else ''}] "
            f"(or {want - 1} for one sequence), got shape {vals.shape}"
        )
    m = np.ones(vals.shape[1:3], bool) if mask is None else as_array(mask, dtype=bool)
    if m.shape != vals.shape[1:3]:
        raise InputError(f"mask shape {m.shape} does not match [batch, pos] = {vals.shape[1:3]}")
    if mode is not None:
        meta["mode"] = mode
    meta.setdefault("mode", "unknown")
    return States(vals, m, meta=meta, **extra)


def first_token_mask(st: States | np.ndarray) -> np.ndarray:
    """``[batch, pos]`` True at each sequence's first real token (padding-aware, left or right).

    With ``positions`` (slots selected from the sequence) the first token is the slot whose
    position is the first attended one (``attention_mask``), or 0 without an attention mask;
    plain arrays, and a bare ``[batch, pos]`` mask, take each row's first valid slot."""
    if not isinstance(st, States):
        st = States(np.zeros((0,)), as_array(st, dtype=bool))
    mask = st.mask
    if st.positions is not None:
        pos = np.asarray(st.positions)
        if st.attention_mask is not None:
            am = np.asarray(st.attention_mask, bool)
            first = np.where(am.any(1), am.argmax(1), -1)
        else:
            first = np.zeros(mask.shape[0], int)
        return mask & (pos == first[:, None])
    out = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(1))
    out[rows, mask[rows].argmax(1)] = True
    return out


def included_mask(st: States | np.ndarray, exclude_first: bool = True) -> np.ndarray:
    """``[batch, pos]`` True at the tokens an analysis uses: valid ones, without each sequence's
    first real token when ``exclude_first`` (see :func:`first_token_mask`). A new array: callers
    may write into it. ``st`` is :class:`States` or a bare ``[batch, pos]`` mask.

    >>> import numpy as np
    >>> included_mask(np.array([[False, True, True, True]])).tolist()
    [[False, False, True, True]]
    """
    if not isinstance(st, States):
        st = States(np.zeros((0,)), as_array(st, dtype=bool))
    return st.mask & ~first_token_mask(st) if exclude_first else st.mask.copy()


def last_token_mask(mask: np.ndarray) -> np.ndarray:
    """``[batch, pos]`` True at each row's last valid slot."""
    mask = np.asarray(mask, bool)
    out = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(1))
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(1)
    out[rows, last] = True
    return out


def warn_nan(n_nan: int, what: str) -> None:
    """Warn once that ``n_nan`` values of ``what`` are NaN (zero or NaN vectors)."""
    if n_nan:
        warnings.warn(
            f"{n_nan} {what} are NaN (zero or non-finite vectors); they are marked NaN and "
            "counted in n_nan, not averaged",
            RuntimeWarning,
            stacklevel=3,
        )
