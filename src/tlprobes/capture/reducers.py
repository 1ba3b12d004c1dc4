"""Streaming probes: reduce inside the hook and keep no d_model vectors.

:class:`Steps` keeps, per block and selected token, the rotation angle between consecutive states,
the step length, the state norm and the additive attention/MLP split of the step; :class:`ResidualMean`
keeps running sums per state that merge across batches by addition. Both cost a few floats per
token, so a data set never has to fit in memory::

    >>> steps = tp.run(model, prompts, tp.Steps(positions=tp.Target(" her"))).steps   # doctest: +SKIP
    >>> steps.angle.shape                                                              # doctest: +SKIP
    torch.Size([L, batch, 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._adapter import Adapter, Meta
from .._result import Inputs
from ._base import BatchContext, Probe, cat_pieces
from ._capture import Captured
from ._positions import PositionSpec, check_spec

__all__ = ["Steps", "StepsCapture", "ResidualMean", "ResidualMeanCapture", "angle_deg"]


def angle_deg(u: Tensor, v: Tensor) -> Tensor:
    """Angle in degrees between ``u`` and ``v`` along the last dim: ``2*atan2(|u^-v^|, |u^+v^|)``.

    Stable for (anti)parallel vectors, unlike ``acos``; NaN where either vector is zero.
    """
    u = u.double()
    v = v.double()
    un = u / u.norm(dim=-1, keepdim=True)
    vn = v / v.norm(dim=-1, keepdim=True)
    return torch.rad2deg(2 * torch.atan2((un - vn).norm(dim=-1), (un + vn).norm(dim=-1)))


@dataclass(frozen=True, repr=False)
class StepsCapture(Captured):
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

    def new_batch(self, ctx: BatchContext) -> dict[Any, Any]:
        return {"rows": {}}

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        x = ctx.select(t, self.positions).double()
        if site == "attn_out":
            scratch["a"] = x
            return
        if site == "mlp_out":
            scratch["m"] = x
            return
        idx = ctx.adapter.n_layers if site == "resid_post" else int(layer)  # type: ignore[arg-type]
        rows = scratch["rows"]
        rows[("norm", idx)] = ctx.store(x.norm(dim=-1))
        prev = scratch.get("x")
        if prev is not None:
            delta = x - prev
            step = delta.norm(dim=-1)
            l = idx - 1
            rows[("angle", l)] = ctx.store(angle_deg(prev, x))
            rows[("step", l)] = ctx.store(step)
            if self.components:
                a, m = scratch.pop("a"), scratch.pop("m")
                unit = delta / step.unsqueeze(-1)
                rows[("attn_proj", l)] = ctx.store((a * unit).sum(-1))
                rows[("mlp_proj", l)] = ctx.store((m * unit).sum(-1))
                an, mn = a.norm(dim=-1), m.norm(dim=-1)
                rows[("attn_norm", l)] = ctx.store(an)
                rows[("mlp_norm", l)] = ctx.store(mn)
                rows[("attn_mlp_cos", l)] = ctx.store((a * m).sum(-1) / (an * mn))
        scratch["x"] = x

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        n = ctx.adapter.n_layers
        rows = scratch["rows"]
        pos, valid = ctx.positions(self.positions)
        out: dict[str, Any] = {"positions": pos, "mask": valid}
        out["norm"] = self._stack(rows, [("norm", l) for l in range(n + 1)], self.name)
        names = ["angle", "step"]
        if self.components:
            names += ["attn_proj", "mlp_proj", "attn_norm", "mlp_norm", "attn_mlp_cos"]
        for key in ("angle", "step", "attn_proj", "mlp_proj", "attn_norm", "mlp_norm", "attn_mlp_cos"):
            out[key] = self._stack(rows, [(key, l) for l in range(n)], self.name) if key in names else None
        return out

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        nan = float("nan")
        layout: dict[str, tuple[int, tuple[int, ...], Any]] = {
            k: (1, (2,), nan)
            for k in ("angle", "step", "norm", "attn_proj", "mlp_proj", "attn_norm", "mlp_norm", "attn_mlp_cos")
        }
        layout["positions"] = (0, (1,), -1)
        layout["mask"] = (0, (1,), False)
        return cat_pieces(pieces, layout)

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> StepsCapture:
        return StepsCapture(inputs=inputs, meta=meta, **piece)


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
        idx = ctx.adapter.n_layers if site == "resid_post" else layer
        _, valid = ctx.positions(self.positions)
        x = ctx.select(t, self.positions).double()
        w = valid.to(x.device, x.dtype).unsqueeze(-1)
        scratch[("sum", idx)] = ctx.store((x * w).sum((0, 1)))
        scratch[("sq", idx)] = ctx.store((x.pow(2) * w).sum((0, 1, 2)))

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        n = ctx.adapter.n_layers
        _, valid = ctx.positions(self.positions)
        return {
            "sum": self._stack(scratch, [("sum", l) for l in range(n + 1)], self.name),
            "sum_sq_norm": self._stack(scratch, [("sq", l) for l in range(n + 1)], self.name),
            "count": torch.tensor(int(valid.sum())),
        }

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return {k: sum(p[k] for p in pieces[1:]) + pieces[0][k] for k in pieces[0]}

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> ResidualMeanCapture:
        return ResidualMeanCapture(meta=meta, **piece)
