"""Merging and saving captures: one protocol for dense and streamed captures alike.

Every capture has ``merge(other)`` (dense captures concatenate along the prompt axis, padding ragged
axes exactly as a session pads its batches; streamed ones add their sums), ``state_dict()`` (tensors
and JSON-able values only) and ``from_state_dict(state)`` (an exact round trip), so the pieces of a
sharded run can be saved (:func:`tlprobes._state.save_state`) and merged. Pieces cut at batch
boundaries merge to exactly what one run gives::

    >>> import torch
    >>> model, prompts = tp.load_model(), ["Mary saw her brother.", "John gave her a book."]
    >>> a = tp.run(model, prompts[:1], tp.Residual()).residual
    >>> b = tp.run(model, prompts[1:], tp.Residual()).residual
    >>> both = tp.run(model, prompts, tp.Residual(), batch_size=1).residual
    >>> torch.equal(a.merge(b).resid, both.resid)
    True
    >>> type(a).from_state_dict(a.state_dict()).resid.shape
    torch.Size([5, 1, 6, 128])
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

from torch import Tensor

from .._adapter import Meta
from .._errors import InputError
from .._result import Inputs, check_meta, pad_cat
from .._state import check_kind

__all__ = [
    "Mergeable", "Layout", "check_meta", "meta_state", "meta_from_state", "POSITIONS", "cat_field",
]

#: ``field -> (prompt axis, axes padded to the longer piece, pad value)``.
Layout = dict[str, tuple[int, tuple[int, ...], Any]]


def meta_state(meta: Meta | None) -> dict[str, Any] | None:
    return None if meta is None else meta.to_dict()


def meta_from_state(state: dict[str, Any] | None) -> Meta | None:
    return None if state is None else Meta(**state)




def _check_type(a: Any, b: Any) -> None:
    if type(a) is not type(b):
        raise InputError(f"cannot merge {type(b).__name__} into {type(a).__name__}; valid: "
                         f"another {type(a).__name__}")


def cat_field(name: str, a: Tensor | None, b: Tensor | None, rule: tuple[int, tuple[int, ...], Any],
              what: str) -> Tensor | None:
    """Concatenate one field of two pieces along its prompt axis (after checking the shapes)."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise InputError(f"cannot merge {what}: field {name!r} is None in one piece only")
    dim, pads, value = rule
    fixed = [d for d in range(a.dim()) if d != dim and d not in pads]
    if a.dim() != b.dim() or any(a.shape[d] != b.shape[d] for d in fixed) or a.dtype != b.dtype:
        raise InputError(
            f"cannot merge {what}: field {name!r} has shape {tuple(b.shape)} {b.dtype} but "
            f"{tuple(a.shape)} {a.dtype} here (only axis {dim} and {list(pads)} may differ)"
        )
    return pad_cat([a, b], dim=dim, pad_dims=pads, value=value)


class Mergeable:
    """``merge`` / ``state_dict`` / ``from_state_dict`` for dataclass captures with ``inputs`` and
    ``meta``: tensor fields in ``_LAYOUT`` concatenate, fields in ``_SAME`` must be equal, fields
    in ``_UNSAVED`` (callables of the model) are kept from ``self`` and not saved."""

    _LAYOUT: ClassVar[Layout] = {}
    _SAME: ClassVar[tuple[str, ...]] = ()
    _UNSAVED: ClassVar[tuple[str, ...]] = ()

    def merge(self, other: Any) -> Any:
        """This capture's prompts, then ``other``'s: a new capture (neither piece changes)."""
        _check_type(self, other)
        return self._merge(other, self.inputs.merge(other.inputs))  # type: ignore[attr-defined]

    def _merge(self, other: Any, inputs: Inputs) -> Any:
        _check_type(self, other)
        what = type(self).__name__
        check_meta(self.meta, other.meta, what)  # type: ignore[attr-defined]
        for name in self._SAME:
            if getattr(self, name) != getattr(other, name):
                raise InputError(f"cannot merge {what}: {name} {getattr(other, name)!r} differs "
                                 f"from {getattr(self, name)!r}")
        kw = {f.name: getattr(self, f.name)
              for f in fields(self) if f.init}  # type: ignore[arg-type]
        for name, rule in self._LAYOUT.items():
            kw[name] = cat_field(name, getattr(self, name), getattr(other, name), rule, what)
        kw["inputs"] = inputs
        return type(self)(**self._merged_extra(other, kw))

    def _merged_extra(self, other: Any, kw: dict[str, Any]) -> dict[str, Any]:
        """Fields derived from others (e.g. a protocol); default: as merged."""
        return kw

    def _fields_state(self) -> dict[str, Any]:
        skip = ("inputs", "meta", *self._UNSAVED)
        return {f.name: getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                if f.init and f.name not in skip}

    def _extra_ids(self) -> Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """Every field (tensors as tensors), the inputs and the model facts; see
        :func:`tlprobes._state.save_state`."""
        return {
            "kind": type(self).__name__,
            "fields": self._fields_state(),
            "inputs": self.inputs.state_dict(self._extra_ids()),  # type: ignore[attr-defined]
            "meta": meta_state(self.meta),  # type: ignore[attr-defined]
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Any:
        """The capture :meth:`state_dict` describes."""
        check_kind(state, cls)
        return cls._from_fields(state["fields"], Inputs.from_state_dict(state["inputs"]),
                                meta_from_state(state["meta"]))

    @classmethod
    def _from_fields(cls, values: dict[str, Any], inputs: Inputs, meta: Meta | None) -> Any:
        return cls(**values, inputs=inputs, meta=meta)


#: The fields every position-selected capture shares.
POSITIONS: Layout = {"positions": (0, (1,), -1), "mask": (0, (1,), False)}
