"""The residual stream: the L+1 states x_0..x_L of every selected token.

x_0 is ``resid_pre`` of block 0 (embedding + positional embedding) and x_l is ``resid_post`` of block
l-1. ``final_state="ln_f"`` applies the final LayerNorm to x_L, which is what HF's
``hidden_states[-1]`` holds; ``"raw"`` (default) keeps TL's raw residual::

    >>> model = tp.load_model()                          # 4 layers, d_model 128
    >>> tokens = model.to_tokens(["Mary saw her brother.", "John gave her a book."])
    >>> with tp.attach(model, tp.Residual(positions="last", mid=True)) as s:
    ...     _ = model(tokens)
    >>> s.result.residual.resid.shape                    # [L + 1, batch, 1, d_model]
    torch.Size([5, 2, 1, 128])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from .._adapter import Adapter, Meta
from .._errors import TLProbesError, choices
from .._result import Inputs
from .._state import stateful
from ._base import BatchContext, Probe, cat_pieces
from ._capture import Captured
from ._merge import POSITIONS, Layout, Mergeable
from ._positions import PositionSpec, check_spec

__all__ = ["Residual", "ResidualCapture"]

_FINAL = ("raw", "ln_f")
#: How pieces concatenate (batches in a session, captures in ``merge``).
_LAYOUT: Layout = {
    "resid": (1, (2,), 0.0),
    "resid_mid": (1, (2,), 0.0),
    **POSITIONS,
    "row_width": (0, (), 0),
}


@stateful
@dataclass(frozen=True, repr=False)
class ResidualCapture(Mergeable, Captured):
    """``resid[l]`` is x_l (l = 0..L); ``resid_mid[l]`` is block l's ``resid_mid`` (when asked).

    ``row_width[b]``: the padded width of the forward pass prompt ``b`` ran in (slots past it were
    added when batches were merged and hold no activation); ``protocol``: how the states were made
    (BOS, final state, padding side, batch widths), printed by every report; ``final_norm``: the
    model's own final normalisation (the adapter's ``ln_final``), so a lens on this capture needs
    no norm named (not saved with the tensors).
    """

    resid: Float[Tensor, "state batch k d_model"]
    resid_mid: Float[Tensor, "layer batch k d_model"] | None
    final_state: str
    row_width: Tensor | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    final_norm: Callable[[Tensor], Tensor] | None = field(default=None, repr=False, compare=False)

    _LAYOUT = _LAYOUT
    _SAME = ("final_state",)
    _UNSAVED = ("final_norm",)  # the model's own module: kept from the first piece, not saved

    def _merged_extra(self, other: Any, kw: dict[str, Any]) -> dict[str, Any]:
        n_bos = _bos_count(self.protocol) + _bos_count(other.protocol)
        has_bos = torch.arange(kw["mask"].shape[0]) < n_bos  # only the count is read
        kw["protocol"] = protocol_of(kw["inputs"], kw["row_width"], has_bos, self.final_state)
        return kw

    @property
    def n_layers(self) -> int:
        return self.resid.shape[0] - 1

    def _token_metrics(self) -> dict[str, Tensor]:
        x = self.resid.double()
        return {
            "path length": (x[1:] - x[:-1]).norm(dim=-1).sum(0),
            "final norm": x[-1].norm(dim=-1),
        }


@dataclass(frozen=True)
class Residual(Probe):
    """Capture the residual stream x_0..x_L (and optionally ``resid_mid``) at selected positions.

    Args:
        positions: which tokens to keep (see :mod:`tlprobes.capture._positions`): ``"all"``,
            ``"last"``, indices, or ``tp.Target(" her", offset=-1)``.
        mid: also keep ``resid_mid`` of every block (x_l + attn_out_l).
        final_state: ``"raw"`` or ``"ln_f"`` (final LayerNorm applied to x_L, as in HF).
        name: key of the capture in the result.
    """

    positions: PositionSpec = "all"
    mid: bool = False
    final_state: Literal["raw", "ln_f"] = "raw"
    name: str = "residual"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))
        if self.final_state not in _FINAL:
            raise TLProbesError(
                f"unknown final_state {self.final_state!r}; valid: {choices(_FINAL)}"
            )

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        n = adapter.n_layers
        sites: list[tuple[str, int | None]] = [("resid_pre", l) for l in range(n)]
        sites.append(("resid_post", n - 1))
        if self.mid:
            sites += [("resid_mid", l) for l in range(n)]
        return sites

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        n = ctx.adapter.n_layers
        if site == "resid_post" and self.final_state == "ln_f":
            ctx.put(scratch, "resid", n, n + 1, ctx.adapter.ln_final(ctx.select(t, self.positions)))
        elif site in ("resid_pre", "resid_post"):
            idx = n if site == "resid_post" else int(layer)  # type: ignore[arg-type]
            ctx.put_selected(scratch, "resid", idx, n + 1, t, self.positions)
        else:
            ctx.put_selected(scratch, "mid", int(layer), n, t, self.positions)  # type: ignore[arg-type]

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        n = ctx.adapter.n_layers
        pos, valid = ctx.positions(self.positions)
        batch, width = ctx.tokens.shape
        return {
            "resid": ctx.take(scratch, "resid", n + 1, self.name),
            "resid_mid": ctx.take(scratch, "mid", n, self.name) if self.mid else None,
            "positions": pos,
            "mask": valid,
            "row_width": torch.full((batch,), width, dtype=torch.long),
            "has_bos": _starts_with_bos(ctx),
            "final_norm": ctx.adapter.ln_final,
        }

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return cat_pieces(pieces, {**_LAYOUT, "has_bos": (0, (), False)})

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> ResidualCapture:
        return ResidualCapture(
            positions=piece["positions"],
            mask=piece["mask"],
            inputs=inputs,
            meta=meta,
            resid=piece["resid"],
            resid_mid=piece["resid_mid"],
            final_state=self.final_state,
            row_width=piece["row_width"],
            protocol=protocol_of(inputs, piece["row_width"], piece["has_bos"], self.final_state),
            final_norm=piece["final_norm"],
        )


def _starts_with_bos(ctx: BatchContext) -> Tensor:
    """``[batch]`` True where the prompt's first real token is the tokenizer's BOS."""
    tok = ctx.adapter.tokenizer
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    if bos is None:
        return torch.zeros(ctx.tokens.shape[0], dtype=torch.bool)
    first = ctx.mask.long().argmax(1)
    return ctx.tokens.gather(1, first[:, None])[:, 0] == int(bos)


def _bos_count(protocol: dict[str, Any]) -> int:
    """How many prompts started with BOS, read back from a protocol's ``"bos"`` entry."""
    bos, n = protocol.get("bos", "no"), int(protocol.get("n_prompts", 0))
    if bos == "yes":
        return n
    if bos == "no":
        return 0
    return int(str(bos).split(" of ")[0])


def protocol_of(
    inputs: Inputs, row_width: Tensor, has_bos: Tensor, final_state: str
) -> dict[str, Any]:
    """The choices that produced a residual capture, in words and numbers (JSON-able)."""
    am = inputs.attention_mask.bool()
    left = bool((~am[:, :1] & am.any(1, keepdim=True)).any())
    widths = sorted({int(w) for w in row_width.tolist()})
    n_bos = int(has_bos.sum())
    return {
        "bos": ("yes" if n_bos == len(has_bos) else "no" if n_bos == 0
                else f"{n_bos} of {len(has_bos)}"),
        "final_state": "ln_f(x_L)" if final_state == "ln_f" else "raw x_L",
        "padding_side": "left" if left else "right",
        "batch_widths": widths,
        "merge_padding": len(widths) > 1,
        "n_prompts": int(am.shape[0]),
    }
