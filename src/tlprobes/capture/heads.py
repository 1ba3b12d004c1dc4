"""Which heads move the token: per-head attribution of each block's step, streamed.

:class:`HeadSteps` splits, inside the hooks, each block's step ``x_(l+1) - x_l`` into its parts: one
per attention head (``z_h @ W_O[h]``, from ``blocks.{l}.attn.hook_z``), the attention output bias
(what ``hook_attn_out`` holds beyond the heads' sum, i.e. ``b_O``), and the MLP. For each part and
selected token it keeps only scalars, which add up exactly over the parts:

* ``step_proj``: projection onto the step direction (sums to the step length ``|x_(l+1) - x_l|``);
* ``state_proj``: projection onto the current state ``x_l / |x_l|`` (sums to the step's radial
  part);
* ``norm``: the part's own length (does not sum);
* ``angle``: its share of the rotation angle between ``x_l`` and ``x_(l+1)`` (degrees; the angle
  split in proportion to each part's push perpendicular to ``x_l``; sums to the angle);
* ``dla``: direct logit attribution to a target token (the next token by default) through the
  model's final norm with its scale frozen at the final state, as TL's
  ``ActivationCache.logit_attrs`` (``dla="frozen"``); or the exact effect of removing the part from
  the final state through the full norm and unembedding (``dla="ablate"``, not additive).

Per prompt, the values at the selected slots are averaged; the probe keeps running sums over prompts
(count, sum, sum of squares per field, layer and part), so its memory does not grow with the number
of prompts. Give ``baseline`` (e.g. the word before the target) to also stream the paired per-prompt
difference::

    >>> hs = tp.run(model, prompts, tp.HeadSteps(positions=tp.Target(" her"),
    ...             baseline=tp.Target(" her", offset=-1))).head_steps      # doctest: +SKIP
    >>> hs.mean("angle").shape  # [layer, part]: heads, attn_bias, mlp  # doctest: +SKIP
    torch.Size([4, 6])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .._adapter import Adapter, Meta
from .._errors import InputError, ModelError, ResultsError, choices
from .._result import Displayable, Inputs, pad_cat
from .._state import stateful
from ._base import BatchContext, Probe
from ._merge import (
    check_meta,
    meta_from_state,
    meta_state,
)
from ._positions import PositionSpec, Target, check_spec  # noqa: F401 - docstring example

__all__ = ["HeadSteps", "HeadStepsCapture", "FIELDS", "GROUPS"]

#: The per-part scalars, in the order of the moment tensors' first axis.
FIELDS: tuple[str, ...] = ("step_proj", "state_proj", "norm", "angle", "dla")
#: Moment groups: the selected positions, the baseline positions, and their paired difference.
GROUPS: tuple[str, ...] = ("target", "baseline", "contrast")
_DLA = ("frozen", "ablate")
_MOMENTS = ("n", "sum", "sumsq")


def _spec_str(spec: Any) -> str:
    return repr(spec)


@stateful
@dataclass(frozen=True, repr=False)
class HeadStepsCapture(Displayable):
    """Streamed per-head attribution: moments over prompts per group, field, layer and part.

    ``moments[group][k]`` for ``k`` in ``("n", "sum", "sumsq")`` has shape ``[field, layer, part]``
    (float64); parts are ``H0..H{n-1}``, ``attn_bias``, ``mlp``. With ``keep_tokens=True`` the
    per-token scalars are kept as well: ``tokens[field]`` ``[layer, batch, slot, part]`` plus
    ``tokens["dla_embed"]`` / ``tokens["logit"]`` ``[batch, slot]`` (the embedding's DLA and the
    frozen-scale decomposition's total, which equals the model's own logit of the target).
    """

    moments: dict[str, dict[str, Tensor]]
    parts: tuple[str, ...]
    settings: dict[str, Any]
    meta: Meta | None
    tokens: dict[str, Tensor] | None = None
    positions: Tensor | None = None
    mask: Tensor | None = None
    inputs: Inputs | None = field(default=None, compare=False)

    # -------------------------------------------------------------- reading
    @property
    def n_layers(self) -> int:
        return int(next(iter(self.moments.values()))["n"].shape[1])

    @property
    def n_heads(self) -> int:
        return len(self.parts) - 2

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.moments)

    def _field(self, name: str) -> int:
        if name not in FIELDS:
            raise InputError(f"unknown field {name!r}; valid: {choices(FIELDS)}")
        return FIELDS.index(name)

    def _group(self, group: str) -> dict[str, Tensor]:
        if group not in self.moments:
            hint = "" if group not in GROUPS else " (pass baseline=... to HeadSteps for it)"
            raise InputError(
                f"no group {group!r} in this capture{hint}; valid: {choices(self.moments)}"
            )
        return self.moments[group]

    def count(self, field: str, group: str = "target") -> Float[Tensor, "layer part"]:
        return self._group(group)["n"][self._field(field)]

    def mean(self, field: str, group: str = "target") -> Float[Tensor, "layer part"]:
        """Mean over prompts of ``field`` per layer and part (NaN where no prompt counted)."""
        m = self._group(group)
        i = self._field(field)
        n = m["n"][i]
        return torch.where(n > 0, m["sum"][i] / n.clamp(min=1), torch.full_like(n, float("nan")))

    # -------------------------------------------------------------- merging and saving
    def merge(self, other: HeadStepsCapture) -> HeadStepsCapture:
        """The capture of both shards (moments add; kept tokens and the inputs concatenate along
        the prompt axis)."""
        inputs = None
        if isinstance(other, HeadStepsCapture):
            if self.inputs is not None and other.inputs is not None:
                inputs = self.inputs.merge(other.inputs)
        return self._merge(other, inputs)

    def _merge(self, other: HeadStepsCapture, inputs: Inputs | None) -> HeadStepsCapture:
        if not isinstance(other, HeadStepsCapture):
            raise InputError(f"cannot merge {type(other).__name__} into HeadStepsCapture")
        if other.parts != self.parts or other.settings != self.settings:
            raise InputError(
                f"cannot merge head steps with settings {other.settings} and parts {other.parts} "
                f"into settings {self.settings} and parts {self.parts}"
            )
        if self.meta is not None and other.meta is not None and self.meta.mode != other.meta.mode:
            raise InputError(
                f"cannot merge a {other.meta.mode!r} capture into a {self.meta.mode!r} one"
            )
        check_meta(self.meta, other.meta, "HeadStepsCapture")
        moments = {
            g: {k: self.moments[g][k] + other.moments[g][k] for k in _MOMENTS} for g in self.moments
        }
        tokens = positions = mask = None
        if self.tokens is not None and other.tokens is not None:
            tokens = {k: _cat_tokens(k, [self.tokens[k], other.tokens[k]]) for k in self.tokens}
            positions = pad_cat([self.positions, other.positions], dim=0, pad_dims=(1,), value=-1)
            mask = pad_cat([self.mask, other.mask], dim=0, pad_dims=(1,), value=False)
        return HeadStepsCapture(
            moments, self.parts, dict(self.settings), self.meta, tokens, positions, mask, inputs
        )

    def state_dict(self) -> dict[str, Any]:
        """The moments, kept tokens, settings, model facts and inputs: tensors and JSON-able
        values only; save it with :func:`tlprobes._state.save_state`."""
        return {
            "kind": type(self).__name__,
            **self._fields_state(),
            "meta": meta_state(self.meta),
            "inputs": None if self.inputs is None else self.inputs.state_dict(),
        }

    def _fields_state(self) -> dict[str, Any]:
        return {
            "moments": {g: dict(m) for g, m in self.moments.items()},
            "parts": tuple(self.parts),
            "settings": dict(self.settings),
            "tokens": None if self.tokens is None else dict(self.tokens),
            "positions": self.positions,
            "mask": self.mask,
        }

    @classmethod
    def _from_fields(
        cls, f: dict[str, Any], inputs: Inputs | None, meta: Meta | None
    ) -> HeadStepsCapture:
        return cls(
            {g: dict(m) for g, m in f["moments"].items()}, tuple(f["parts"]), dict(f["settings"]),
            meta, None if f["tokens"] is None else dict(f["tokens"]), f["positions"], f["mask"],
            inputs,
        )

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> HeadStepsCapture:
        """The capture :meth:`state_dict` describes (an exact copy). Also reads the flat layout
        of tlprobes 0.x (tensors keyed ``moments.<group>.<k>`` plus a JSON ``"info"``)."""
        if "info" in state and "kind" not in state:
            return cls._from_flat(state)
        if not isinstance(state, dict) or state.get("kind") != cls.__name__:
            raise ResultsError(
                f"not a HeadSteps state dict: its 'kind' is "
                f"{state.get('kind') if isinstance(state, dict) else None!r} and it has no 'info' "
                f"entry among {choices(sorted(state)) if isinstance(state, dict) else state!r}"
            )
        inputs = state.get("inputs")
        return cls._from_fields(state, None if inputs is None else Inputs.from_state_dict(inputs),
                                meta_from_state(state["meta"]))

    @classmethod
    def _from_flat(cls, state: dict[str, Any]) -> HeadStepsCapture:
        info = json.loads(state["info"])
        moments = {g: {k: state[f"moments.{g}.{k}"] for k in _MOMENTS} for g in info["groups"]}
        tok_keys = [k[len("tokens."):] for k in state if k.startswith("tokens.")]
        tokens = {k: state[f"tokens.{k}"] for k in tok_keys} if tok_keys else None
        meta = Meta(**info["meta"]) if info["meta"] is not None else None
        return cls(
            moments, tuple(info["parts"]), info["settings"], meta, tokens,
            state.get("positions"), state.get("mask"),
        )

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor by a flat dotted name (``moments.target.sum``, ``tokens.angle``, ...)."""
        out: dict[str, Tensor] = {}
        for g, m in self.moments.items():
            for k, v in m.items():
                out[f"moments.{g}.{k}"] = v
        if self.tokens is not None:
            for k, v in self.tokens.items():
                out[f"tokens.{k}"] = v
            if self.positions is not None and self.mask is not None:
                out["positions"], out["mask"] = self.positions, self.mask
        return out

    def _build_page(self) -> Any:
        """Default view: layer x part heatmaps of the mean angle share and DLA over prompts."""
        from ..render import Page, figure_to_html, plot_head_heatmap

        page = Page("HeadSteps")
        mode = f", {self.meta.mode}" if self.meta is not None else ""
        page.add_heading(f"HeadSteps ({self.meta.model_name if self.meta else '?'}{mode})")
        page.add_text(f"positions {self.settings.get('positions')}, baseline "
                      f"{self.settings.get('baseline')}; means over prompts; rows are blocks")
        for f, label in (("angle", "angle share (deg)"), ("step_proj", "projection on the step"),
                         ("dla", "direct logit attribution")):
            vals = self.mean(f).numpy()
            if not np.isfinite(vals).any():
                continue
            fig = plot_head_heatmap(vals, head_labels=self.parts, colorbar_label=label,
                                    ylabel="block", title=f"{f}: mean at the selected positions")
            page.add_html(figure_to_html(fig, alt=f))
        return page

    def __repr__(self) -> str:
        n = int(self.moments["target"]["n"].max()) if "target" in self.moments else 0
        return (
            f"HeadStepsCapture(layers={self.n_layers}, heads={self.n_heads}, "
            f"groups={list(self.moments)}, prompts={n}, dla={self.settings.get('dla')!r}"
            + (f", mode={self.meta.mode!r})" if self.meta is not None else ")")
        )


def _cat_tokens(key: str, vals: list[Tensor]) -> Tensor:
    if vals[0].dim() == 2:  # [batch, slot]
        return pad_cat(vals, dim=0, pad_dims=(1,), value=float("nan"))
    return pad_cat(vals, dim=1, pad_dims=(2,), value=float("nan"))


def _final_norm_linear(adapter: Adapter) -> tuple[bool, Tensor | None, Tensor | None]:
    """The final norm as a linear map once its scale is frozen: ``(centre, weight, bias)``.

    ``norm(x) = centre(x) / scale * w + b``; with the model's own scale (``ln_final.hook_scale``)
    the map is linear in the residual, which is what TL's ``logit_attrs`` uses. ``w`` and ``b`` are
    read off the adapter's own final norm (so whatever it honours, e.g. Gemma's ``1 + w``, holds
    here too): ``b = norm(0)``, and ``w`` from ``norm`` of ``d`` probe vectors whose statistics are
    known (``c (e_i - e_(i+1))``, mean 0 and mean square ``2c^2/d``; ``c e_i`` for RMS norms), with
    ``c`` so large that ``eps`` is negligible (relative ``5e-10``).
    """
    kind = adapter.normalization
    if kind in ("None", "none"):
        return False, None, None
    centre = kind in ("LN", "LNPre")
    d = adapter.d_model
    W_U = adapter.W_U
    with torch.no_grad():
        zero = torch.zeros(1, d, dtype=torch.float32, device=W_U.device)
        b = adapter.ln_final(zero)[0].float()
        c = 100.0 * d**0.5
        eye = torch.eye(d, dtype=torch.float32, device=W_U.device) * c
        probes = eye - eye.roll(1, dims=1) if centre else eye
        out = adapter.ln_final(probes).float().diagonal()
        w = (out - b) * ((2.0 if centre else 1.0) / d) ** 0.5
    return centre, w, b


@dataclass(frozen=True)
class HeadSteps(Probe):
    """Per-head, bias and MLP attribution of every block's step at selected positions (streamed).

    Args:
        positions: position selector (``"all"``, ``"last"``, ints, :class:`Target`).
        baseline: a second selector (e.g. ``Target(" her", offset=-1)``): its moments and the paired
            per-prompt difference ``target - baseline`` are streamed too (groups ``"baseline"`` and
            ``"contrast"``).
        dla: ``"frozen"`` (default: final-norm scale frozen at the final state, additive, as TL's
            ``logit_attrs``), ``"ablate"`` (``logit(x_L) - logit(x_L - part)`` through the model's
            full final norm; keeps the parts' vectors at the selected positions until the pass
            ends) or ``None`` (no DLA).
        dla_target: ``"next"`` (the next token at each selected position; the last token has none),
            a one-token word (``" her"``) or a token id.
        keep_tokens: also keep every per-token scalar (grows with the number of prompts).

    Example::

        >>> probe = HeadSteps(positions=Target(" her"), baseline=Target(" her", offset=-1))
        >>> probe.dla, probe.dla_target
        ('frozen', 'next')
        >>> hs = tp.run(model, prompts, probe).head_steps          # doctest: +SKIP
        >>> tp.head_contrast(hs, "angle").top(3)                   # doctest: +SKIP
    """

    positions: PositionSpec = "all"
    baseline: PositionSpec | None = None
    dla: str | None = "frozen"
    dla_target: str | int = "next"
    keep_tokens: bool = False
    name: str = "head_steps"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))
        if self.baseline is not None:
            object.__setattr__(self, "baseline", check_spec(self.baseline))
        if self.dla is not None and self.dla not in _DLA:
            raise InputError(f"unknown dla {self.dla!r}; valid: {choices(_DLA)} or None")
        t = self.dla_target
        if isinstance(t, bool) or not isinstance(t, (str, int)) or t == "":
            raise InputError(f"dla_target must be 'next', a word or a token id, got {t!r}")

    # -------------------------------------------------------------- planning
    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        n = adapter.n_layers
        sites: list[tuple[str, int | None]] = []
        for l in range(n):
            z = f"@blocks.{l}.attn.hook_z"
            sites += [("resid_pre", l), (z, l), ("attn_out", l), ("mlp_out", l)]
        sites.append(("resid_post", n - 1))
        if self.dla is not None and adapter.normalization not in ("None", "none"):
            sites.append(("ln_final_scale", None))
        if isinstance(self.dla_target, int) and not 0 <= self.dla_target < adapter.d_vocab:
            raise InputError(
                f"dla_target token id {self.dla_target} is outside the vocabulary "
                f"0..{adapter.d_vocab - 1}"
            )
        return sites

    def _settings(self) -> dict[str, Any]:
        return {
            "positions": _spec_str(self.positions),
            "baseline": None if self.baseline is None else _spec_str(self.baseline),
            "dla": self.dla,
            "dla_target": self.dla_target,
            "keep_tokens": self.keep_tokens,
        }

    # -------------------------------------------------------------- per batch
    def new_batch(self, ctx: BatchContext) -> dict[Any, Any]:
        pos, valid = ctx.positions(self.positions)
        k1 = pos.shape[1]
        if self.baseline is not None:
            pos2, valid2 = ctx.positions(self.baseline)
            pos, valid = torch.cat([pos, pos2], 1), torch.cat([valid, valid2], 1)
        scratch: dict[Any, Any] = {"pos": pos, "valid": valid, "k1": k1, "layers": {}}
        if self.dla is not None:
            scratch["target"], scratch["target_ok"] = self._targets(ctx, pos, valid)
        return scratch

    def _targets(self, ctx: BatchContext, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        t = self.dla_target
        if isinstance(t, str) and t == "next":
            nxt = (pos + 1).clamp(max=ctx.tokens.shape[1] - 1)
            ok = valid & (pos + 1 < ctx.tokens.shape[1]) & (pos >= 0)
            ok &= ctx.mask.gather(1, nxt.clamp(min=0))
            return ctx.tokens.gather(1, nxt.clamp(min=0)), ok
        if isinstance(t, str):
            ids = ctx.adapter.encode_word(t)
            if len(ids) != 1:
                raise InputError(
                    f"dla_target {t!r} is {len(ids)} tokens {ids}; give a one-token word or a "
                    "token id"
                )
            t = ids[0]
        return torch.full_like(pos, int(t)), valid.clone()

    def _gather(self, t: Tensor, scratch: dict[Any, Any]) -> Tensor:
        idx = scratch.get(("idx", t.device, t.shape[2:]))
        if idx is None:
            idx = scratch["pos"].clamp(min=0).to(t.device)
            idx = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            scratch[("idx", t.device, t.shape[2:])] = idx
        return t.detach().gather(1, idx)

    @staticmethod
    def _norm(scratch: dict[Any, Any], ctx: BatchContext) -> tuple[bool, Any, Any]:
        if "norm" not in scratch:
            scratch["norm"] = _final_norm_linear(ctx.adapter)
        return scratch["norm"]

    def _directions(self, scratch: dict[Any, Any], ctx: BatchContext, like: Tensor) -> Tensor:
        """``g = centre(w * W_U[:, target])`` per slot: DLA_part = <part, g> / scale."""
        g = scratch.get("g")
        if g is None:
            centre, w, _ = self._norm(scratch, ctx)
            W_U = ctx.adapter.W_U.detach()
            g = W_U[:, scratch["target"].to(W_U.device)].permute(1, 2, 0)
            g = g.to(like.device, torch.float32)
            if w is not None:
                g = g * w.detach().to(g.device, g.dtype)
            if centre:
                g = g - g.mean(-1, keepdim=True)
            scratch["g"] = g
        return g

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        if site == "ln_final_scale":
            scratch["scale"] = self._gather(t, scratch)[..., 0].double()
            return
        x = self._gather(t, scratch)
        if site == "resid_post":
            scratch["x_final"] = x
            return
        st = scratch["layers"].setdefault(layer, {})
        if site == "resid_pre":
            st["x"] = x
            if layer == 0 and self.dla is not None:
                g = self._directions(scratch, ctx, x)
                scratch["dla_embed_raw"] = (x.float() * g).sum(-1).double()
            return
        if site.startswith("@"):  # hook_z: [batch, slot, head, d_head] -> each head's output
            W_O = _w_o(ctx.adapter, int(layer))  # type: ignore[arg-type]
            st["heads"] = torch.einsum("bkhd,hdm->bkhm", x, W_O.to(x.device, x.dtype))
            return
        if site == "attn_out":
            st["a"] = x
            return
        # mlp_out: the block is complete; reduce it to scalars
        self._reduce_layer(int(layer), st, x, scratch, ctx)  # type: ignore[arg-type]

    def _reduce_layer(
        self,
        layer: int,
        st: dict[str, Tensor],
        m: Tensor,
        scratch: dict[Any, Any],
        ctx: BatchContext,
    ) -> None:
        missing = [k for k in ("x", "heads", "a") if k not in st]
        if missing:
            raise InputError(
                f"{self.name}: block {layer}'s hooks {missing} did not fire before hook_mlp_out; "
                "tlprobes captures whole forward passes (no stop_at_layer / start_at_layer)"
            )
        heads, a = st.pop("heads").float(), st.pop("a").float()
        x, m = st.pop("x").float(), m.float()
        bias = a - heads.sum(2)  # b_O, plus what float rounding leaves: the parts sum to a exactly
        b_O = _b_o(ctx.adapter, layer) if layer == 0 else None
        if b_O is not None:  # guard (block 0): attn_out must be the heads plus b_O
            dev = (bias - b_O.to(bias.device, bias.dtype)).abs().amax()
            scratch["bias_dev"] = [dev / a.abs().amax().clamp(min=1e-30)]
        V = torch.cat([heads, bias.unsqueeze(2), m.unsqueeze(2)], 2)  # [batch, slot, part, d]
        cols = [a + m, x]
        if self.dla == "frozen":
            cols.append(self._directions(scratch, ctx, x))
        W = torch.stack(cols, 2)  # [batch, slot, c, d]
        # only dot products here (3 kernels); end_batch turns all blocks' into scalars at once
        scratch.setdefault("dots", {})[layer] = (
            torch.matmul(V, W.transpose(-1, -2)),  # [batch, slot, part, c]
            V.pow(2).sum(-1),  # [batch, slot, part]
            torch.matmul(W[:, :, :2], W[:, :, :2].transpose(-1, -2)),  # step, x Gram
        )
        if self.dla == "ablate":
            scratch.setdefault("V", {})[layer] = V

    def _fields(self, dots: dict[int, tuple[Tensor, Tensor, Tensor]], n: int) -> Tensor:
        """Every block's scalars from its dot products: ``[field, layer, batch, slot, part]``."""
        D, nn, G = (torch.stack([dots[l][i] for l in range(n)]).double() for i in range(3))
        ss, xx, sx = G[..., 0, 0], G[..., 1, 1], G[..., 0, 1]
        s_len, x_len = ss.sqrt(), xx.sqrt()
        perp = (ss - sx.pow(2) / xx).clamp(min=0).sqrt()
        theta = torch.rad2deg(torch.atan2(perp, x_len + sx / x_len))  # angle(x, x + step)
        p_c = (D[..., 0] - D[..., 1] * (sx / xx)[..., None]) / perp[..., None]
        return torch.stack(
            [
                D[..., 0] / s_len[..., None],
                D[..., 1] / x_len[..., None],
                nn.sqrt(),
                theta[..., None] * p_c / perp[..., None],
                D[..., 2] if self.dla == "frozen" else torch.full_like(nn, float("nan")),
            ]
        )

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        ad = ctx.adapter
        n = ad.n_layers
        got = scratch.get("dots", {})
        if len(got) != n or "x_final" not in scratch:
            missing = sorted(set(range(n)) - set(got))[:4]
            raise InputError(
                f"{self.name}: blocks {missing} (or the final state) were not captured in this "
                "forward pass; tlprobes captures whole forward passes (no stop_at_layer / "
                "start_at_layer)"
            )
        self._check_split(scratch, ad)
        vals = self._fields(got, n)  # [field, layer, batch, slot, part]
        valid = scratch["valid"].to(vals.device)
        tok: dict[str, Tensor] = {}
        if self.dla is not None:
            ok = scratch["target_ok"].to(vals.device)
            scale = scratch.get("scale")
            if scale is None:
                scale = torch.ones(ok.shape, dtype=torch.float64, device=vals.device)
            scale = scale.to(vals.device)
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=vals.device)
            if self.dla == "frozen":
                vals[4] = torch.where(ok[None, :, :, None], vals[4] / scale[None, :, :, None], nan)
            else:
                vals[4] = self._ablate(scratch, ctx, ok, n).to(vals.device)
            g = self._directions(scratch, ctx, scratch["x_final"])
            const = self._dla_const(scratch, ctx).to(vals.device)
            x_fin = scratch["x_final"].float()
            embed = scratch["dla_embed_raw"].to(vals.device) / scale
            tok["dla_embed"] = torch.where(ok, embed, nan)
            total = (x_fin * g).sum(-1).double().to(vals.device) / scale + const
            tok["logit"] = torch.where(ok, total, nan)
        nan_ = torch.tensor(float("nan"), dtype=vals.dtype, device=vals.device)
        vals = torch.where(valid[None, None, :, :, None], vals, nan_)
        k1 = scratch["k1"]
        per_target = _prompt_mean(vals[..., :k1, :])  # [field, layer, batch, part]
        groups = {"target": per_target}
        if self.baseline is not None:
            per_base = _prompt_mean(vals[..., k1:, :])
            groups["baseline"] = per_base
            groups["contrast"] = per_target - per_base
        moments = {g: {k: v.cpu() for k, v in _moments(p).items()} for g, p in groups.items()}
        piece: dict[str, Any] = {"moments": moments, "settings": self._settings()}
        if self.keep_tokens:
            tokens = {f: ctx.store(vals[i]).cpu() for i, f in enumerate(FIELDS)}
            for k, v in tok.items():
                tokens[k] = v.cpu()
            piece.update(tokens=tokens, positions=scratch["pos"], mask=scratch["valid"])
        return piece

    @staticmethod
    def _check_split(scratch: dict[Any, Any], ad: Adapter) -> None:
        """Refuse a model whose ``hook_attn_out`` is not ``sum_h z_h W_O[h] + b_O`` (one sync)."""
        devs = scratch.get("bias_dev")
        if not devs:
            return
        worst = float(torch.stack(devs).max())
        dtype = getattr(torch, ad.meta.dtype, torch.float32)
        eps = torch.finfo(dtype).eps if dtype.is_floating_point else 1.2e-7
        tol = max(1e-3, 64 * eps)
        if not worst <= tol:
            raise ModelError(
                f"HeadSteps cannot split {ad.meta.model_name}'s attention output into heads: "
                f"hook_attn_out differs from sum_h z_h @ W_O[h] + b_O by {worst:.3g} (relative; "
                f"tolerance {tol:.1g}). The architecture changes the attention output after W_O "
                "(e.g. a post-attention norm), so per-head parts would not add up to the step"
            )

    def _dla_const(self, scratch: dict[Any, Any], ctx: BatchContext) -> Tensor:
        """``<b_norm, W_U[:, t]> + b_U[t]``: the part of the target's logit no component writes."""
        _, _, b = self._norm(scratch, ctx)
        W_U = ctx.adapter.W_U.detach()
        t = scratch["target"].to(W_U.device)
        const = ctx.adapter.b_U.detach()[t].double()
        if b is not None:
            const = const + (b.detach().to(W_U.dtype) @ W_U)[t].double()
        return const

    def _ablate(self, scratch: dict[Any, Any], ctx: BatchContext, ok: Tensor, n: int) -> Tensor:
        """``logit_t(x_L) - logit_t(x_L - part)`` through the adapter's final norm and unembedding
        column."""
        ad = ctx.adapter
        x_fin = scratch["x_final"].float()  # [batch, slot, d]
        W_U = ad.W_U.detach()
        t = scratch["target"].to(W_U.device)
        cols = W_U[:, t].permute(1, 2, 0).float()  # [batch, slot, d]

        def logit(x: Tensor) -> Tensor:  # x [..., batch, slot, d] -> [..., batch, slot]
            y = ad.ln_final(x.to(W_U.dtype)).float()
            return (y * cols.to(y.device)).sum(-1).double()

        base = logit(x_fin)
        out = []
        for l in range(n):
            V = scratch["V"][l].float()  # [batch, slot, part, d]
            ablated = logit((x_fin.unsqueeze(2) - V).permute(2, 0, 1, 3))  # [part, batch, slot]
            out.append((base.unsqueeze(0) - ablated).permute(1, 2, 0))
        res = torch.stack(out)  # [layer, batch, slot, part]
        nan = torch.tensor(float("nan"), dtype=res.dtype, device=res.device)
        return torch.where(ok.to(res.device)[None, :, :, None], res, nan)

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        out: dict[str, Any] = {"settings": pieces[0]["settings"]}
        groups = pieces[0]["moments"]
        out["moments"] = {
            g: {
                k: sum((p["moments"][g][k] for p in pieces[1:]), pieces[0]["moments"][g][k])
                for k in _MOMENTS
            }
            for g in groups
        }
        if self.keep_tokens:
            out["tokens"] = {
                k: _cat_tokens(k, [p["tokens"][k] for p in pieces]) for k in pieces[0]["tokens"]
            }
            out["positions"] = pad_cat(
                [p["positions"] for p in pieces], dim=0, pad_dims=(1,), value=-1
            )
            out["mask"] = pad_cat([p["mask"] for p in pieces], dim=0, pad_dims=(1,), value=False)
        return out

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> HeadStepsCapture:
        n_heads = piece["moments"]["target"]["n"].shape[-1] - 2
        parts = tuple(f"H{h}" for h in range(n_heads)) + ("attn_bias", "mlp")
        return HeadStepsCapture(
            piece["moments"], parts, piece["settings"], meta, piece.get("tokens"),
            piece.get("positions"), piece.get("mask"), inputs,
        )


def _w_o(adapter: Adapter, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """``W_O`` of one block, ``[head, d_head, d_model]``: one slice per *query* head, so
    grouped-query attention (fewer key/value heads) needs nothing special (``hook_z`` has one row
    per query head)."""
    return adapter.model.blocks[layer].attn.W_O.detach()


def _b_o(adapter: Adapter, layer: int) -> Tensor | None:
    b = getattr(adapter.model.blocks[layer].attn, "b_O", None)
    return None if b is None else b.detach()


def _prompt_mean(v: Tensor) -> Tensor:
    """Mean over the slot axis (-2) of the finite values.

    ``[..., batch, slot, part] -> [..., batch, part]``; NaN where a prompt has no finite slot."""
    fin = torch.isfinite(v)
    n = fin.sum(-2)
    s = torch.where(fin, v, torch.zeros((), dtype=v.dtype, device=v.device)).sum(-2)
    return torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, float("nan")))


def _moments(p: Tensor) -> dict[str, Tensor]:
    """Counts, sums and sums of squares over the batch axis (-2) of the finite values."""
    fin = torch.isfinite(p)
    x = torch.where(fin, p, torch.zeros((), dtype=p.dtype, device=p.device))
    return {"n": fin.sum(-2).double(), "sum": x.sum(-2), "sumsq": x.pow(2).sum(-2)}
