"""Any activation by canonical site or TL hook name, at chosen layers and positions.

::

    >>> tp.Activation("resid_mid", layers=[1, 2])
    Activation(site='resid_mid', layers=[1, 2], positions='all', name='activation')
    >>> model = tp.load_model()
    >>> act = tp.run(model, ["Mary saw her brother."],
    ...              tp.Activation("blocks.0.mlp.hook_post", positions="last")).activation
    >>> act.values.shape                                 # [layer, batch, 1, d_mlp]
    torch.Size([1, 1, 1, 512])

Site names are checked against the model when the probe is attached; a typo fails with the valid
names (TL 3.9's bridge would silently ignore it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

from .._adapter import LAYER_SITES, SITES, Adapter, Meta
from .._errors import SiteError, choices
from .._result import Inputs
from .._state import stateful
from ._base import BatchContext, Probe, cat_pieces
from ._capture import Captured
from ._merge import POSITIONS, Layout, Mergeable
from ._positions import PositionSpec, check_spec

__all__ = ["Activation", "ActivationCapture"]


_LAYOUT: Layout = {"values": (1, (2,), 0.0), **POSITIONS}


@stateful
@dataclass(frozen=True, repr=False)
class ActivationCapture(Mergeable, Captured):
    """``values[i]`` is the activation at ``layers[i]`` (one row for a global hook)."""

    values: Float[Tensor, "layer batch k *rest"]
    site: str
    layers: tuple[int, ...]

    _LAYOUT = _LAYOUT
    _SAME = ("site", "layers")

    def _token_metrics(self) -> dict[str, Tensor]:
        """Per token: the norm of the activation at each captured layer (the view's menu)."""
        from einops import rearrange

        v = rearrange(self.values.double(), "layer batch k ... -> layer batch k (...)")
        return {f"|{self.site}| layer {l}": v[i].norm(dim=-1) for i, l in enumerate(self.layers)}


@dataclass(frozen=True)
class Activation(Probe):
    """Capture one site (``"resid_mid"``, ``"attn_out"``, ...) or any TL hook name.

    Args:
        site: a canonical site or a full hook name such as ``"blocks.0.mlp.hook_post"``.
        layers: block indices for block sites (``None``: all); ignored for hook names.
        positions: position selector for activations shaped ``[batch, pos, ...]``.
    """

    site: str = "resid_post"
    layers: Any = None
    positions: PositionSpec = "all"
    name: str = "activation"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))
        if not isinstance(self.site, str) or not self.site:
            raise SiteError(f"site must be a non-empty str, got {self.site!r}; valid: {choices(SITES)}")
        if "." not in self.site and not self.site.startswith("hook_") and self.site not in SITES:
            raise SiteError(f"unknown site {self.site!r}; valid sites: {choices(SITES)}, or a TL hook name")
        if self.site in ("pattern",):
            raise SiteError("use tp.Attention for attention patterns (site 'pattern')")

    def _rows(self, adapter: Adapter) -> tuple[int, ...]:
        """The layers this probe reads (one row, 0, for a global site or a raw hook name)."""
        if self.site in LAYER_SITES:
            return adapter.layers(self.layers)
        return (0,)

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        if self.site in LAYER_SITES:
            return [(self.site, l) for l in self._rows(adapter)]
        if self.site in SITES:
            return [(self.site, None)]
        adapter.raw_hook_point(self.site)  # validate the name now
        return [("@" + self.site, None)]

    def new_batch(self, ctx: BatchContext) -> dict[Any, Any]:
        return {"layers": self._rows(ctx.adapter)}

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        layers = scratch["layers"]
        index = layers.index(layer) if layer is not None else 0
        ctx.put_selected(scratch, "values", index, len(layers), t, self.positions)

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        pos, valid = ctx.positions(self.positions)
        layers = scratch["layers"]
        return {"values": ctx.take(scratch, "values", len(layers), self.name), "positions": pos,
                "mask": valid, "layers": layers}

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return cat_pieces(pieces, _LAYOUT)

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> ActivationCapture:
        return ActivationCapture(
            positions=piece["positions"],
            mask=piece["mask"],
            inputs=inputs,
            meta=meta,
            values=piece["values"],
            site=self.site,
            layers=piece["layers"],
        )
