"""The probe protocol shared by every capture and streaming reducer.

A probe is a frozen configuration. It declares the ``(site, layer)`` pairs it needs; the session
registers one hook per pair and, during a forward pass, hands each activation to every probe that
asked for it. A probe keeps per-batch scratch, turns it into a small *piece* when the pass ends, and
merges pieces across batches (``merge``) into its capture (``finalize``)::

    plan(adapter)          -> [(site, layer), ...]          once, at attach time
    new_batch(ctx)         -> scratch                       per forward pass
    on_activation(...)                                      inside the hook
    end_batch(scratch,ctx) -> piece                         when the forward pass returns
    finish_batch(piece,ctx) -> piece                        after the model call has returned
    merge(pieces)          -> piece                         across batches (sum or concat)
    finalize(piece, inputs, meta) -> capture
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .._errors import InputError
from .._result import Inputs, pad_cat
from .._tl.adapter import Adapter, Meta
from ._positions import BatchPositions, PositionSpec

__all__ = ["Probe", "BatchContext", "Buffer", "cat_pieces"]


@dataclass(eq=False)
class Buffer:
    """A ``[rows, ...]`` capture buffer of one batch and the rows written into it so far."""

    data: Tensor
    filled: set[int] = field(default_factory=set)


class BatchContext:
    """What a probe knows about the forward pass in flight: tokens, mask, its position selectors
    (:attr:`selection`, a :class:`~tlprobes.capture._positions.BatchPositions`) and where
    captures are stored (:meth:`put` / :meth:`take`)."""

    def __init__(
        self,
        adapter: Adapter,
        tokens: Int[Tensor, "batch seq"],
        mask: Bool[Tensor, "batch seq"],
        *,
        store_device: torch.device | str | None,
        store_dtype: torch.dtype | None,
        prompts: list[str] | None = None,
    ):
        self.adapter = adapter
        self.tokens = tokens.detach().cpu()
        self.mask = mask.detach().bool().cpu()
        self.store_device = store_device
        self.store_dtype = store_dtype
        self.prompts = prompts
        self.selection = BatchPositions(
            self.tokens, self.mask, encode_word=adapter.encode_word, describe=self.describe
        )
        self._async = False

    def describe(self, b: int) -> str:
        if self.prompts is not None and b < len(self.prompts):
            return f"prompt {b} ({self.prompts[b][:60]!r})"
        return f"prompt {b}"

    def positions(self, spec: PositionSpec) -> tuple[Int[Tensor, "batch k"], Bool[Tensor, "batch k"]]:
        """Resolve (and cache) a position selector for this batch."""
        return self.selection.resolve(spec)

    def select(self, t: Tensor, spec: PositionSpec) -> Tensor:
        """Keep only the selected positions of ``t`` (``[batch, seq, ...]`` -> ``[batch, k, ...]``)."""
        return self.selection.select(t, spec)

    def put_selected(
        self, scratch: dict[Any, Any], key: str, index: int, rows: int, t: Tensor, spec: PositionSpec
    ) -> None:
        """``put(scratch, key, index, rows, select(t, spec))``, gathering straight into the buffer
        row (one kernel instead of a gather and a copy) when the buffer sits on ``t``'s device in
        ``t``'s dtype. The hot path of every position-selected capture."""
        buf = scratch.get(key)
        if (
            buf is None
            or buf.data.device != t.device
            or buf.data.dtype != t.dtype
            or (isinstance(spec, str) and spec == "all")
        ):
            self.put(scratch, key, index, rows, self.select(t, spec))
            return
        torch.gather(t.detach(), 1, self.selection.gather_index(t, spec), out=buf.data[index])
        buf.filled.add(index)

    def store(self, t: Tensor) -> Tensor:
        """Detach and move a capture to where results live (CPU by default)."""
        t = t.detach()
        if self.store_device is not None or self.store_dtype is not None:
            t = t.to(device=self.store_device, dtype=self.store_dtype)
        return t

    def put(self, scratch: dict[Any, Any], key: str, index: int, rows: int, x: Tensor) -> None:
        """Copy ``x`` into row ``index`` of a ``[rows, *x.shape]`` :class:`Buffer` kept in
        ``scratch[key]``.

        The buffer lives where results live (pinned host memory when the model is on a GPU, so
        the copy overlaps the forward pass); no per-layer tensors are stacked (copied) later.
        """
        buf = scratch.get(key)
        if buf is None:
            device = torch.device(self.store_device) if self.store_device is not None else x.device
            pin = x.is_cuda and device.type == "cpu"
            data = torch.empty((rows, *x.shape), dtype=self.store_dtype or x.dtype, device=device,
                               pin_memory=pin)
            buf = scratch[key] = Buffer(data)
            self._async = self._async or pin
        buf.data[index].copy_(x.detach(), non_blocking=buf.data.is_pinned())
        buf.filled.add(index)

    def take(self, scratch: dict[Any, Any], key: str, rows: int, what: str) -> Tensor:
        """The buffer filled by :meth:`put`, after checking every row arrived."""
        buf = scratch.get(key)
        filled = buf.filled if buf is not None else set()
        if len(filled) != rows:
            missing = sorted(set(range(rows)) - filled)[:4]
            raise InputError(
                f"{what}: rows {missing} of {key!r} were not captured in this forward pass; "
                "tlprobes captures whole forward passes (no stop_at_layer / start_at_layer)"
            )
        if self._async:
            torch.cuda.synchronize()
        return buf.data


def cat_pieces(pieces: list[dict[Any, Any]], layout: dict[str, tuple[int, tuple[int, ...], Any]]) -> dict[Any, Any]:
    """Merge per-batch pieces by concatenating each field along its batch dim, padding ragged dims.

    ``layout`` maps a field to ``(batch_dim, pad_dims, pad_value)``; fields not in it are taken from
    the first piece.
    """
    out = dict(pieces[0])
    for key, (dim, pad_dims, value) in layout.items():
        vals = [p[key] for p in pieces]
        if vals[0] is None:
            continue
        out[key] = pad_cat(vals, dim=dim, pad_dims=pad_dims, value=value)
    return out


@dataclass(frozen=True)
class Probe:
    """Base class of probes. Subclasses are frozen dataclasses with a ``name`` field."""

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_batch(self, ctx: BatchContext) -> dict[Any, Any]:
        return {}

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    def finish_batch(self, piece: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        """Heavy per-batch work that should not run inside the model's forward call (where the
        model's own output, e.g. ``[batch, pos, d_vocab]`` logits, is still alive). The session
        calls it once the call has returned: after each batch in ``tp.run``, otherwise before the
        next forward pass, on ``result`` or on detach. Default: nothing to do."""
        return piece

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> Any:  # pragma: no cover
        raise NotImplementedError

    # helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _stack(scratch: dict[Any, Tensor], keys: list[Any], what: str) -> Tensor:
        missing = [k for k in keys if k not in scratch]
        if missing:
            raise InputError(
                f"{what}: hooks {missing[:4]} did not fire in this forward pass; tlprobes captures "
                "whole forward passes (no stop_at_layer / start_at_layer)"
            )
        return torch.stack([scratch[k] for k in keys])
