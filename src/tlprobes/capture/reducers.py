"""Streaming probes: reduce inside the hook and keep no d_model vectors.

:class:`Steps` keeps, per block and selected token, the rotation angle between consecutive states,
the step length, the state norm and the additive attention/MLP split of the step; :class:`ResidualMean`
keeps running sums per state that merge across batches by addition. Both cost a few floats per
token, so a data set never has to fit in memory::

    >>> model, prompts = tp.load_model(), ["Mary saw her brother.", "John gave her a book."]
    >>> steps = tp.run(model, prompts, tp.Steps(positions=tp.Target(" her"))).steps
    >>> steps.angle.shape                                # [L, batch, 1]
    torch.Size([4, 2, 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._adapter import Adapter, Meta
from .._errors import InputError
from .._result import Inputs
from .._state import check_kind, stateful
from ._base import BatchContext, Probe, cat_pieces
from ._capture import Captured
from ._merge import POSITIONS, Layout, Mergeable, check_meta, meta_from_state, meta_state
from ._positions import PositionSpec, check_spec

__all__ = ["Steps", "StepsCapture", "ResidualMean", "ResidualMeanCapture"]

_FIELDS = ("angle", "step", "norm", "attn_proj", "mlp_proj", "attn_norm", "mlp_norm", "attn_mlp_cos")
_LAYOUT: Layout = {**{k: (1, (2,), float("nan")) for k in _FIELDS}, **POSITIONS}


@stateful
@dataclass(frozen=True, repr=False)
class StepsCapture(Mergeable, Captured):
    """Per block l (axis 0, l = 0..L-1: the step x_l -> x_{l+1}) and selected token.

    ``attn_proj + mlp_proj == step`` exactly (projection of each part onto the step direction);
    ``norm`` has L+1 rows, one per state.
    """

    angle: Float[Tensor, "layer batch k"]
    step: Float[Tensor, "layer batch k"]
    norm: Float[Tensor, "state batch k"]
    attn_proj: Float[Tensor, "layer batch k"] | None
    mlp_proj: Float[Tensor, "layer batch k"] | None
    attn_norm: Float[Tensor, "layer batch k"] | None
    mlp_norm: Float[Tensor, "layer batch k"] | None
    attn_mlp_cos: Float[Tensor, "layer batch k"] | None

    _LAYOUT = _LAYOUT

    def _token_metrics(self) -> dict[str, Tensor]:
        out = {"path length": self.step.nansum(0), "mean angle (deg)": self.angle.nanmean(0)}
        out.update({f"angle block {l}": self.angle[l] for l in range(self.angle.shape[0])})
        return out


@dataclass(frozen=True)
class Steps(Probe):
    """Per-step geometry of the residual stream without storing vectors.

    Args:
        positions: position selector, as for :class:`Residual`.
        components: also split each step into attention and MLP parts (hooks attn_out/mlp_out).
    """

    positions: PositionSpec = "all"
    components: bool = True
    name: str = "steps"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        n = adapter.n_layers
        sites: list[tuple[str, int | None]] = []
        for l in range(n):
            sites.append(("resid_pre", l))
            if self.components:
                sites += [("attn_out", l), ("mlp_out", l)]
        sites.append(("resid_post", n - 1))
        return sites

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        # Every quantity is a dot product among x_l, x_(l-1), attn_out and mlp_out: the hook only
        # writes one float64 Gram matrix per token (3 kernels), and end_batch turns all layers'
        # Gram matrices into angles, lengths and the attention/MLP split at once.
        x = ctx.select(t, self.positions)
        if site in ("attn_out", "mlp_out"):
            scratch[site] = x
            return
        n = ctx.adapter.n_layers
        idx = n if site == "resid_post" else int(layer)  # type: ignore[arg-type]
        gram = scratch.get("gram")
        if gram is None:  # [state, batch, k, v, v] for v = (x_l, x_(l-1), attn_out, mlp_out)
            v = 4 if self.components else 2
            gram = scratch["gram"] = torch.full(
                (n + 1, *x.shape[:2], v, v), float("nan"), dtype=torch.float64, device=x.device
            )
            scratch["seen"] = set()
        prev = scratch.get("x")
        if prev is None:
            gram[idx, ..., 0, 0] = x.double().pow(2).sum(-1)
        else:
            vecs = [x, prev]
            if self.components:
                vecs += [scratch.pop("attn_out"), scratch.pop("mlp_out")]
            V = torch.stack(vecs, dim=-2).double()
            torch.matmul(V, V.transpose(-1, -2), out=gram[idx])
        scratch["seen"].add(idx)
        scratch["x"] = x

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        n = ctx.adapter.n_layers
        if len(scratch.get("seen", ())) != n + 1:
            self._stack({}, [("state", l) for l in range(n + 1)], self.name)  # raises: incomplete
        G = scratch["gram"]
        xx, pp, xp = G[1:, ..., 0, 0], G[1:, ..., 1, 1], G[1:, ..., 0, 1]
        cos = (xp / (xx * pp).sqrt()).clamp(-1, 1)
        step = (xx + pp - 2 * xp).clamp(min=0).sqrt()
        fields: dict[str, Tensor] = {
            # 2*atan2(|u^-v^|, |u^+v^|) with |u^-+v^|^2 = 2 -+ 2cos: stable at 0 and 180 degrees
            "angle": torch.rad2deg(
                2 * torch.atan2((2 - 2 * cos).clamp(min=0).sqrt(), (2 + 2 * cos).clamp(min=0).sqrt())
            ),
            "step": step,
            "norm": G[:, ..., 0, 0].sqrt(),
        }
        if self.components:
            aa, mm, am = G[1:, ..., 2, 2], G[1:, ..., 3, 3], G[1:, ..., 2, 3]
            fields["attn_proj"] = (G[1:, ..., 2, 0] - G[1:, ..., 2, 1]) / step
            fields["mlp_proj"] = (G[1:, ..., 3, 0] - G[1:, ..., 3, 1]) / step
            fields["attn_norm"] = aa.sqrt()
            fields["mlp_norm"] = mm.sqrt()
            fields["attn_mlp_cos"] = am / (aa * mm).sqrt()
        pos, valid = ctx.positions(self.positions)
        out: dict[str, Any] = {"positions": pos, "mask": valid}
        out.update({key: fields.get(key) for key in _FIELDS})
        per_layer = [key for key in _FIELDS if out[key] is not None and key != "norm"]
        moved = ctx.store(torch.stack([out[key] for key in per_layer]))  # one transfer per batch
        out.update(zip(per_layer, moved))
        out["norm"] = ctx.store(out["norm"])
        return out

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return cat_pieces(pieces, _LAYOUT)

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> StepsCapture:
        return StepsCapture(inputs=inputs, meta=meta, **piece)


@stateful
@dataclass(frozen=True, repr=False)
class ResidualMeanCapture:
    """Mean residual state per layer over every valid selected token, from running sums."""

    sum: Float[Tensor, "state d_model"]
    sum_sq_norm: Float[Tensor, " state"]
    count: Int[Tensor, ""]
    meta: Meta

    @property
    def mean(self) -> Float[Tensor, "state d_model"]:
        return self.sum / self.count.clamp(min=1)

    @property
    def mean_sq_norm(self) -> Float[Tensor, " state"]:
        return self.sum_sq_norm / self.count.clamp(min=1)

    def tensors(self) -> dict[str, Tensor]:
        return {"sum": self.sum, "sum_sq_norm": self.sum_sq_norm, "count": self.count}

    def merge(self, other: ResidualMeanCapture) -> ResidualMeanCapture:
        """The sums of both pieces (counts add exactly)."""
        if not isinstance(other, ResidualMeanCapture):
            raise InputError(f"cannot merge {type(other).__name__} into ResidualMeanCapture; "
                             "valid: another ResidualMeanCapture")
        check_meta(self.meta, other.meta, "ResidualMeanCapture")
        if other.sum.shape != self.sum.shape:
            raise InputError(f"cannot merge ResidualMeanCapture: sum has shape "
                             f"{tuple(other.sum.shape)} but {tuple(self.sum.shape)} here")
        return ResidualMeanCapture(self.sum + other.sum, self.sum_sq_norm + other.sum_sq_norm,
                                   self.count + other.count, self.meta)

    def state_dict(self) -> dict[str, Any]:
        """The running sums and the model facts (see :func:`tlprobes._state.save_state`)."""
        return {"kind": type(self).__name__, **self.tensors(), "meta": meta_state(self.meta)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ResidualMeanCapture:
        """The capture :meth:`state_dict` describes (an exact copy)."""
        check_kind(state, cls)
        return cls(state["sum"], state["sum_sq_norm"], state["count"],
                   meta_from_state(state["meta"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ResidualMean(Probe):
    """Running sums of x_0..x_L over valid selected tokens (merge = add)."""

    positions: PositionSpec = "all"
    name: str = "residual_mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        n = adapter.n_layers
        return [("resid_pre", l) for l in range(n)] + [("resid_post", n - 1)]

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        n = ctx.adapter.n_layers
        idx = n if site == "resid_post" else int(layer)  # type: ignore[arg-type]
        x = ctx.select(t, self.positions).double()
        # the token weights move to the device once per batch (not once per hook), and are left
        # out when every selected slot is real (no padding, no empty slots)
        key = ("w", x.device)
        if key not in scratch:
            _, valid = ctx.positions(self.positions)
            scratch[key] = None if bool(valid.all()) else valid.to(x.device, x.dtype).unsqueeze(-1)
        w = scratch[key]
        if w is not None:
            x = x * w  # zero rows stay zero when squared
        # into per-batch buffers (pinned and asynchronous on a GPU): no host sync inside the pass
        ctx.put(scratch, "sum", idx, n + 1, x.sum((0, 1)))
        ctx.put(scratch, "sq", idx, n + 1, x.pow(2).sum((0, 1, 2)))

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        n = ctx.adapter.n_layers
        _, valid = ctx.positions(self.positions)
        return {
            "sum": ctx.take(scratch, "sum", n + 1, self.name),
            "sum_sq_norm": ctx.take(scratch, "sq", n + 1, self.name),
            "count": torch.tensor(int(valid.sum())),
        }

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return {k: sum(p[k] for p in pieces[1:]) + pieces[0][k] for k in pieces[0]}

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> ResidualMeanCapture:
        return ResidualMeanCapture(meta=meta, **piece)
