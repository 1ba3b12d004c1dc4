"""Attention patterns ``[batch, head, dest, src]`` of chosen layers, heads and query positions.

Rows are the attending (destination) positions, columns the attended (source) ones; each valid row
sums to 1 and padded keys get 0. ``capture.attention_mask`` says which rows and columns are real::

    >>> model, prompts = tp.load_model(), ["Mary saw her brother.", "John gave her a book."]
    >>> att = tp.run(model, prompts, tp.Attention(layers=[0, 2], heads=[1])).attention
    >>> att.pattern_at(2).shape                          # [batch, head, dest, src]
    torch.Size([2, 1, 7, 7])
    >>> her = tp.run(model, prompts, tp.Attention(positions=tp.Target(" her"))).attention
    >>> her.pattern_at(0).shape                          # [batch, head, slot, src]: the rows of " her"
    torch.Size([2, 4, 1, 7])

What it costs: a full pattern (every head, every row, the model's dtype, kept on the model's device)
is not copied. The hook keeps a reference to the tensor the model computed, and when the pass ends
the capture takes it over: TL 4.3's bridge keeps the last pass's pattern of every layer
(``attn._pattern``), and that reference is released, so the model never holds (or writes) what the
capture holds, and the next forward pass allocates new tensors. ``pattern_at(l)`` and
``layer_patterns`` hand out those tensors; ``pattern`` stacks them into one
``[layer, batch, head, dest, src]`` tensor on first access (one copy, after which the per-layer
tensors are views of it). Selected heads, selected query rows (``positions``), another ``dtype`` or
another ``device`` are copied as they arrive, and only what was asked is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .._display import Display
from .._errors import HeadError, InputError, LayerError, check_index, choices
from .._result import Inputs, pad_cat
from .._state import check_kind, stateful
from .._tl.adapter import Adapter, Meta
from ._base import BatchContext, Probe
from ._merge import (
    cat_field,
    check_meta,
    meta_from_state,
    meta_state,
)
from ._positions import PositionSpec, check_spec

__all__ = ["Attention", "AttentionCapture"]


@stateful
@dataclass(frozen=True, eq=False)
class AttentionCapture(Display):
    """``layer_patterns[i]`` (and ``pattern[i]``) is layer ``layers[i]``; its head axis holds ``heads``.

    With ``positions`` selected, the dest axis holds the selected query slots: ``positions[b, k]``
    is the index of slot ``k`` of prompt ``b`` in its padded sequence (``-1`` for an empty slot,
    whose row is 0) and ``positions_mask[b, k]`` is True where the slot holds a real token.
    """

    layer_patterns: tuple[Float[Tensor, "batch head dest src"], ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    inputs: Inputs
    meta: Meta
    positions: Int[Tensor, "batch k"] | None = None
    positions_mask: Bool[Tensor, "batch k"] | None = None

    @property
    def pattern(self) -> Float[Tensor, "layer batch head dest src"]:
        """All captured layers in one tensor (stacked once, on first access)."""
        stacked = self.__dict__.get("_stacked")
        if stacked is None:
            pats = self.layer_patterns
            stacked = pats[0].unsqueeze(0) if len(pats) == 1 else torch.stack(pats)
            self._adopt(stacked)
        return stacked

    def _adopt(self, stacked: Tensor) -> None:
        """Hold ``stacked`` as the pattern; the per-layer tensors become views of it."""
        object.__setattr__(self, "_stacked", stacked)
        object.__setattr__(self, "layer_patterns", tuple(stacked.unbind(0)))

    @property
    def mask(self) -> Bool[Tensor, "batch seq"]:
        return self.inputs.attention_mask

    @property
    def tokens(self) -> Int[Tensor, "batch seq"]:
        return self.inputs.tokens

    @property
    def str_tokens(self) -> list[list[str]]:
        return self.inputs.str_tokens

    def pattern_at(self, layer: int) -> Float[Tensor, "batch head dest src"]:
        """The pattern of one captured layer (never a copy)."""
        if layer not in self.layers:
            raise LayerError(f"layer {layer} was not captured; captured layers: {choices(self.layers)}")
        return self.layer_patterns[self.layers.index(layer)]

    def tensors(self) -> dict[str, Tensor]:
        out = {"pattern": self.pattern}
        if self.positions is not None:
            out["positions"] = self.positions
            out["positions_mask"] = self.positions_mask  # type: ignore[assignment]
        return out

    # -------------------------------------------------------------- merging and saving
    def merge(self, other: AttentionCapture) -> AttentionCapture:
        """This capture's prompts, then ``other``'s, padded as a session pads its batches (pattern
        rows and columns with 0, empty slots with -1); a new capture."""
        if not isinstance(other, AttentionCapture):
            raise InputError(f"cannot merge {type(other).__name__} into AttentionCapture; valid: "
                             "another AttentionCapture")
        return self._merge(other, self.inputs.merge(other.inputs))

    def _merge(self, other: AttentionCapture, inputs: Inputs) -> AttentionCapture:
        what = "AttentionCapture"
        check_meta(self.meta, other.meta, what)
        for name in ("layers", "heads"):
            if getattr(self, name) != getattr(other, name):
                raise InputError(f"cannot merge {what}: {name} {getattr(other, name)!r} differs "
                                 f"from {getattr(self, name)!r}")
        if (self.positions is None) != (other.positions is None):
            raise InputError(f"cannot merge {what}: one piece kept every query row, the other "
                             "selected positions")
        pats = tuple(
            cat_field(f"layer_patterns[{i}]", a, b, (0, (2, 3), 0.0), what)
            for i, (a, b) in enumerate(zip(self.layer_patterns, other.layer_patterns))
        )
        pos = cat_field("positions", self.positions, other.positions, (0, (1,), -1), what)
        pmask = cat_field("positions_mask", self.positions_mask, other.positions_mask,
                          (0, (1,), False), what)
        return AttentionCapture(pats, self.layers, self.heads, inputs, self.meta, pos, pmask)

    def state_dict(self) -> dict[str, Any]:
        """The per-layer patterns (not stacked: no copy), layers, heads, positions, inputs and
        model facts; see :func:`tlprobes._state.save_state`."""
        return {"kind": type(self).__name__, "fields": self._fields_state(),
                "inputs": self.inputs.state_dict(), "meta": meta_state(self.meta)}

    def _fields_state(self) -> dict[str, Any]:
        return {"layer_patterns": list(self.layer_patterns), "layers": tuple(self.layers),
                "heads": tuple(self.heads), "positions": self.positions,
                "positions_mask": self.positions_mask}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AttentionCapture:
        """The capture :meth:`state_dict` describes (an exact copy)."""
        check_kind(state, cls)
        return cls._from_fields(state["fields"], Inputs.from_state_dict(state["inputs"]),
                                meta_from_state(state["meta"]))

    @classmethod
    def _from_fields(cls, f: dict[str, Any], inputs: Inputs, meta: Meta | None) -> AttentionCapture:
        return cls(tuple(f["layer_patterns"]), tuple(f["layers"]), tuple(f["heads"]), inputs,
                   meta, f["positions"], f["positions_mask"])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shape = (len(self.layers), *self.layer_patterns[0].shape)
        sel = "" if self.positions is None else f", positions={tuple(self.positions.shape)}"
        return f"AttentionCapture(pattern={shape}, layers={self.layers}, heads={self.heads}{sel})"


@dataclass(frozen=True)
class Attention(Probe):
    """Capture attention patterns.

    Args:
        layers: block indices (``None``: all).
        heads: head indices (``None``: all), the same for every layer.
        positions: which query rows to keep (``"all"``: the whole square pattern; otherwise a
            selector as for :class:`~tlprobes.Residual`, e.g. ``tp.Target(" her")``, and the
            capture is ``[layer, batch, head, k, src]``).
        name: key of the capture in the result.
    """

    layers: Any = None
    heads: Any = None
    positions: PositionSpec = "all"
    name: str = "attention"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))

    def _resolve(self, adapter: Adapter) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Validated (layers, heads) for this model."""
        layers = adapter.layers(self.layers)
        if self.heads is None:
            return layers, tuple(range(adapter.n_heads))
        raw = [self.heads] if isinstance(self.heads, int) else list(self.heads)
        heads = []
        for h in raw:
            heads.append(check_index(h, adapter.n_heads, what="head", error=HeadError,
                                     of=f" for {adapter.meta.model_name}"))
        return layers, tuple(dict.fromkeys(heads))

    def _all_rows(self) -> bool:
        return isinstance(self.positions, str) and self.positions == "all"

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        layers, _ = self._resolve(adapter)
        return [("pattern", l) for l in layers]

    def new_batch(self, ctx: BatchContext) -> dict[Any, Any]:
        layers, heads = self._resolve(ctx.adapter)
        scratch: dict[Any, Any] = {
            "layers": layers,
            "heads": heads,
            "row": {l: i for i, l in enumerate(layers)},
            "all_heads": heads == tuple(range(ctx.adapter.n_heads)),
            "refs": {},  # row -> the model's own pattern tensor (kept, not copied)
            "head_index": torch.tensor(heads, dtype=torch.long),
        }
        if not self._all_rows():
            pos, valid = ctx.positions(self.positions)
            scratch["pos"], scratch["valid"] = pos, valid
            scratch["empty"] = None if bool(valid.all()) else ~valid
        return scratch

    def _owns(self, t: Tensor, ctx: BatchContext) -> bool:
        """Can the capture keep the model's tensor itself (no copy would change it)?"""
        dev = ctx.store_device
        return (dev is None or torch.device(dev) == t.device) and (
            ctx.store_dtype is None or ctx.store_dtype == t.dtype
        )

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        row, n = scratch["row"][layer], len(scratch["layers"])
        if not self._all_rows():  # keep only the selected query rows: [batch, head, k, src]
            idx = scratch.get("index")
            if idx is None or idx.device != t.device or idx.shape[1::2] != t.shape[1::2]:
                idx = scratch["pos"].clamp(min=0).to(t.device)[:, None, :, None]
                idx = idx.expand(t.shape[0], t.shape[1], idx.shape[2], t.shape[3])
                scratch["index"] = idx
            sel = t.detach().gather(2, idx)
            if not scratch["all_heads"]:
                sel = sel.index_select(1, _on(scratch, "head_index", t.device))
            if scratch["empty"] is not None:
                sel = sel.masked_fill(_on(scratch, "empty", t.device)[:, None, :, None], 0.0)
            ctx.put(scratch, "pattern", row, n, sel)
        elif not scratch["all_heads"]:
            heads = _on(scratch, "head_index", t.device)
            ctx.put(scratch, "pattern", row, n, t.detach().index_select(1, heads))
        elif self._owns(t, ctx):
            scratch["refs"][row] = t
        else:
            ctx.put(scratch, "pattern", row, n, t)

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        layers = scratch["layers"]
        refs: dict[int, Tensor] = scratch.pop("refs")
        piece: dict[Any, Any] = {"layers": layers, "heads": scratch["heads"], "stacked": None}
        if refs or "pattern" not in scratch:
            if len(refs) != len(layers):
                missing = [l for i, l in enumerate(layers) if i not in refs][:4]
                raise InputError(
                    f"{self.name}: the patterns of layers {missing} were not captured in this forward "
                    "pass; tlprobes captures whole forward passes (no stop_at_layer / start_at_layer)"
                )
            ctx.adapter.release_patterns(layers, refs)  # the model no longer holds them
            piece["pattern"] = [refs[i].detach() for i in range(len(layers))]
        else:
            buf = ctx.take(scratch, "pattern", len(layers), self.name)
            piece["pattern"], piece["stacked"] = list(buf.unbind(0)), buf
        if not self._all_rows():
            piece["positions"], piece["mask"] = scratch["pos"], scratch["valid"]
        return piece

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        if len(pieces) == 1:
            return pieces[0]
        out = dict(pieces[0])
        out["stacked"] = None
        out["pattern"] = [
            pad_cat([p["pattern"][i] for p in pieces], dim=0, pad_dims=(2, 3), value=0.0)
            for i in range(len(out["layers"]))
        ]
        if "positions" in out:
            out["positions"] = pad_cat([p["positions"] for p in pieces], dim=0, pad_dims=(1,), value=-1)
            out["mask"] = pad_cat([p["mask"] for p in pieces], dim=0, pad_dims=(1,), value=False)
        return out

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> AttentionCapture:
        cap = AttentionCapture(
            layer_patterns=tuple(piece["pattern"]),
            layers=piece["layers"],
            heads=piece["heads"],
            inputs=inputs,
            meta=meta,
            positions=piece.get("positions"),
            positions_mask=piece.get("mask"),
        )
        if piece.get("stacked") is not None:
            cap._adopt(piece["stacked"])
        return cap


def _on(scratch: dict[Any, Any], key: str, device: torch.device) -> Tensor:
    """``scratch[key]`` on ``device``, moved once per batch (not once per hook)."""
    cached = scratch.get((key, device))
    if cached is None:
        cached = scratch[(key, device)] = scratch[key].to(device)
    return cached
