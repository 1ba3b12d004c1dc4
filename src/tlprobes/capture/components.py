"""Attention and MLP outputs of each block: what each sublayer writes into the residual stream.

x_{l+1} - x_l = attn_out_l + mlp_out_l exactly (tested against the residual captures)::

    >>> model, prompts = tp.load_model(), ["Mary saw her brother.", "John gave her a book."]
    >>> tp.run(model, prompts, tp.Components(layers=[0, 1])).components.attn_out.shape
    torch.Size([2, 2, 7, 128])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

from .._adapter import Adapter, Meta
from .._errors import SiteError, choices
from .._result import Inputs
from .._state import stateful
from ._base import BatchContext, Probe, cat_pieces
from ._capture import Captured
from ._merge import POSITIONS, Layout, Mergeable
from ._positions import PositionSpec, check_spec

__all__ = ["Components", "ComponentsCapture"]

_PARTS = ("attn_out", "mlp_out")
_LAYOUT: Layout = {"attn_out": (1, (2,), 0.0), "mlp_out": (1, (2,), 0.0), **POSITIONS}


@stateful
@dataclass(frozen=True, repr=False)
class ComponentsCapture(Mergeable, Captured):
    """``attn_out[i]`` / ``mlp_out[i]`` belong to block ``layers[i]`` (None when not asked for)."""

    attn_out: Float[Tensor, "layer batch k d_model"] | None
    mlp_out: Float[Tensor, "layer batch k d_model"] | None
    layers: tuple[int, ...]

    _LAYOUT = _LAYOUT
    _SAME = ("layers",)

    def _token_metrics(self) -> dict[str, Tensor]:
        """Per token: the norm of what each block's attention and MLP write (the view's menu)."""
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            for part, t in (("attn", self.attn_out), ("mlp", self.mlp_out)):
                if t is not None:
                    out[f"|{part}_out| block {layer}"] = t[i].double().norm(dim=-1)
        return out


@dataclass(frozen=True)
class Components(Probe):
    """Capture ``attn_out`` and/or ``mlp_out`` of chosen blocks at selected positions.

    Args:
        layers: block indices (``None``: all; negative counts from the end).
        parts: any of ``"attn_out"``, ``"mlp_out"``.
        positions: position selector, as for :class:`Residual`.
    """

    layers: Any = None
    parts: tuple[str, ...] = _PARTS
    positions: PositionSpec = "all"
    name: str = "components"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))
        parts = (self.parts,) if isinstance(self.parts, str) else tuple(self.parts)
        for p in parts:
            if p not in _PARTS:
                raise SiteError(f"unknown component {p!r}; valid: {choices(_PARTS)}")
        object.__setattr__(self, "parts", parts)

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        return [(p, l) for l in adapter.layers(self.layers) for p in self.parts]

    def new_batch(self, ctx: BatchContext) -> dict[Any, Any]:
        return {"layers": ctx.adapter.layers(self.layers)}

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        layers = scratch["layers"]
        ctx.put_selected(scratch, site, layers.index(layer), len(layers), t, self.positions)

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        layers = scratch["layers"]
        pos, valid = ctx.positions(self.positions)
        out: dict[str, Any] = {"positions": pos, "mask": valid, "layers": layers}
        for p in _PARTS:
            out[p] = ctx.take(scratch, p, len(layers), self.name) if p in self.parts else None
        return out

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return cat_pieces(pieces, _LAYOUT)

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> ComponentsCapture:
        return ComponentsCapture(
            positions=piece["positions"],
            mask=piece["mask"],
            inputs=inputs,
            meta=meta,
            attn_out=piece["attn_out"],
            mlp_out=piece["mlp_out"],
            layers=piece["layers"],
        )
