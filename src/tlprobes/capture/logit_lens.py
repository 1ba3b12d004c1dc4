"""The logit lens: what the unembedding reads from every residual state x_0..x_L.

For each state, ``ln_final`` (fresh statistics, the model's own weights) and ``W_U``/``b_U`` give
logits; at x_L they equal the model's logits exactly. Only small per-layer numbers are kept
(top-k ids and log-probs, the target's log-prob and rank, entropy, KL to the final distribution);
``keep_logprobs=True`` also keeps the ``[state, batch, k, vocab]`` log-probs::

    >>> lens = tp.run(model, prompts, tp.LogitLens(top_k=5, positions="last")).logit_lens  # doctest: +SKIP
    >>> lens.top_strings(layer=-1)                                                          # doctest: +SKIP

``apply_ln=False`` is the course's variant (lecture 222): ``W_U`` applied to Hugging Face's
``hidden_states``, i.e. x_0..x_(L-1) raw and x_L after the final norm (HF's last hidden state
already is), so the last state's read-out is the model's own prediction in both variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._adapter import Adapter, Meta
from .._errors import TLProbesError
from .._result import Inputs
from .._state import stateful
from ._base import BatchContext, Probe, cat_pieces
from ._capture import Captured
from ._merge import POSITIONS, Layout, Mergeable
from ._positions import PositionSpec, check_spec

__all__ = ["LogitLens", "LogitLensCapture"]


_PER_STATE = (1, (2,), 0.0)
_LAYOUT: Layout = {
    "top_ids": (1, (2,), 0),
    "top_logprobs": _PER_STATE,
    "target_ids": (0, (1,), -1),
    "target_logprob": (1, (2,), float("nan")),
    "target_rank": (1, (2,), -1),
    "entropy": _PER_STATE,
    "kl_to_final": _PER_STATE,
    "logprobs": _PER_STATE,
    **POSITIONS,
}


@stateful
@dataclass(frozen=True, repr=False)
class LogitLensCapture(Mergeable, Captured):
    """Per state (axis 0: x_0..x_L), per prompt and selected slot.

    ``target_ids`` is the token each slot is scored against (the next token by default; ``-1`` where
    there is none, and then ``target_logprob``/``target_rank`` are NaN/-1).
    """

    top_ids: Int[Tensor, "state batch k top"]
    top_logprobs: Float[Tensor, "state batch k top"]
    target_ids: Int[Tensor, "batch k"]
    target_logprob: Float[Tensor, "state batch k"]
    target_rank: Int[Tensor, "state batch k"]
    entropy: Float[Tensor, "state batch k"]
    kl_to_final: Float[Tensor, "state batch k"]
    logprobs: Float[Tensor, "state batch k vocab"] | None
    apply_ln: bool

    _LAYOUT = _LAYOUT
    _SAME = ("apply_ln",)

    def _extra_ids(self) -> Tensor:
        return self.top_ids  # their strings are saved too: top_strings works after loading

    def _build_page(self) -> Any:
        from ..render import Page, logit_lens_table

        page = Page("LogitLens")
        page.add_heading(f"Logit lens ({self.meta.model_name}, {self.meta.mode})")
        strs = self.selected_str_tokens()
        n_states = self.top_ids.shape[0]
        for b in range(min(4, self.mask.shape[0])):
            top = [[row[0] for row in self.top_strings(layer=i)[b]] for i in range(n_states)]
            probs = self.top_logprobs[:, b, :, 0].exp().double().numpy()
            page.add_page(
                logit_lens_table(
                    top, probs, row_labels=[f"x{i}" for i in range(n_states)],
                    col_labels=strs[b], mask=self.mask[b].numpy(), title=f"prompt {b}",
                )
            )
        return page

    def top_strings(self, layer: int = -1) -> list[list[list[str]]]:
        """Top-k token strings at one state: ``[batch][slot][rank]``."""
        tok = getattr(self.inputs, "decode", None)
        ids = self.top_ids[layer].tolist()
        if tok is None:
            return [[[str(i) for i in slot] for slot in row] for row in ids]
        return [[tok(slot) for slot in row] for row in ids]


@dataclass(frozen=True)
class LogitLens(Probe):
    """Logit lens at every residual state.

    Args:
        top_k: how many top tokens to keep per state and slot.
        positions: position selector, as for :class:`Residual`.
        targets: ``"next"`` (the next token of the prompt, default), ``None``, one token id for all
            slots, or a ``[batch, k]`` int tensor.
        apply_ln: apply the final norm to every state (True, the logit lens) or only to x_L, as
            HF's ``hidden_states`` have it (False, the course's variant).
        keep_logprobs: also keep the full ``[state, batch, k, vocab]`` log-probs.
    """

    top_k: int = 5
    positions: PositionSpec = "all"
    targets: Any = "next"
    apply_ln: bool = True
    keep_logprobs: bool = False
    name: str = "logit_lens"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", check_spec(self.positions))
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise TLProbesError(f"top_k must be a positive int, got {self.top_k!r}")
        if not (
            self.targets is None
            or (isinstance(self.targets, str) and self.targets == "next")
            or isinstance(self.targets, (int, Tensor))
        ):
            raise TLProbesError(
                f"unknown targets {self.targets!r}; valid: 'next', None, a token id, or a "
                "[batch, k] LongTensor"
            )

    def plan(self, adapter: Adapter) -> list[tuple[str, int | None]]:
        if self.top_k > adapter.d_vocab:
            raise TLProbesError(f"top_k={self.top_k} exceeds the vocabulary size {adapter.d_vocab}")
        adapter.require_readout()  # a random or non-standard LM head: a clear ModelError, up front
        n = adapter.n_layers
        return [("resid_pre", l) for l in range(n)] + [("resid_post", n - 1)]

    def on_activation(
        self, site: str, layer: int | None, t: Tensor, scratch: dict[Any, Any], ctx: BatchContext
    ) -> None:
        idx = ctx.adapter.n_layers if site == "resid_post" else layer
        scratch[idx] = ctx.select(t, self.positions).detach()

    def _targets(self, ctx: BatchContext) -> Tensor:
        pos, valid = ctx.positions(self.positions)
        if self.targets is None:
            return torch.full_like(pos, -1)
        if isinstance(self.targets, int):
            return torch.where(valid, torch.full_like(pos, self.targets), -1)
        if isinstance(self.targets, Tensor):
            if self.targets.shape != pos.shape:
                raise TLProbesError(
                    f"targets has shape {tuple(self.targets.shape)}, but the selected positions "
                    f"have shape {tuple(pos.shape)} [batch, k]"
                )
            return self.targets.long()
        # "next": the token at the next position, when that position is a real token
        tokens, mask = ctx.tokens, ctx.mask
        seq = tokens.shape[1]
        nxt = (pos + 1).clamp(max=seq - 1)
        has_next = valid & (pos + 1 < seq) & mask.gather(1, nxt)
        return torch.where(has_next, tokens.gather(1, nxt), -1)

    def end_batch(self, scratch: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        n = ctx.adapter.n_layers
        if len(scratch) != n + 1:
            self._stack(scratch, list(range(n + 1)), self.name)  # raises: a state is missing
        # on the model's device, never stacked; the lens itself runs in finish_batch, once the
        # model call has returned and its own logits are freed
        return {"states": [scratch[i] for i in range(n + 1)]}

    def finish_batch(self, piece: dict[Any, Any], ctx: BatchContext) -> dict[Any, Any]:
        states = piece.pop("states")
        n = len(states) - 1
        pos, valid = ctx.positions(self.positions)
        targets = self._targets(ctx)
        adapter = ctx.adapter
        tgt = targets.to(states[0].device)
        has_t = tgt >= 0
        tgt_c = tgt.clamp(min=0)

        def logprobs_of(x: Tensor, last: bool = False) -> Tensor:
            ln = self.apply_ln or last  # the course variant: ln_f on x_L only, as HF's hidden states
            return torch.log_softmax(adapter.readout(x, apply_ln=ln).float(), dim=-1)

        final = logprobs_of(states[n], last=True)
        p_final = final.exp()
        fields: dict[str, list[Tensor]] = {
            k: [] for k in ("top_ids", "top_logprobs", "target_logprob", "target_rank", "entropy", "kl")
        }
        kept: list[Tensor] = []
        for i in range(n + 1):
            lp = final if i == n else logprobs_of(states[i])
            top = lp.topk(self.top_k, dim=-1)
            fields["top_ids"].append(top.indices)
            fields["top_logprobs"].append(top.values)
            t_lp = lp.gather(-1, tgt_c.unsqueeze(-1)).squeeze(-1)
            fields["target_logprob"].append(torch.where(has_t, t_lp, torch.nan))
            rank = (lp > t_lp.unsqueeze(-1)).sum(-1)
            fields["target_rank"].append(torch.where(has_t, rank, -1))
            fields["entropy"].append(-(lp.exp() * lp).sum(-1))
            fields["kl"].append((p_final * (final - lp)).sum(-1))
            if self.keep_logprobs:
                kept.append(ctx.store(lp))
        return {
            "top_ids": ctx.store(torch.stack(fields["top_ids"])).long(),
            "top_logprobs": ctx.store(torch.stack(fields["top_logprobs"])),
            "target_ids": targets,
            "target_logprob": ctx.store(torch.stack(fields["target_logprob"])),
            "target_rank": ctx.store(torch.stack(fields["target_rank"])).long(),
            "entropy": ctx.store(torch.stack(fields["entropy"])),
            "kl_to_final": ctx.store(torch.stack(fields["kl"])),
            "logprobs": torch.stack(kept) if kept else None,
            "positions": pos,
            "mask": valid,
        }

    def merge(self, pieces: list[dict[Any, Any]]) -> dict[Any, Any]:
        return cat_pieces(pieces, _LAYOUT)

    def finalize(self, piece: dict[Any, Any], inputs: Inputs, meta: Meta) -> LogitLensCapture:
        return LogitLensCapture(
            positions=piece["positions"],
            mask=piece["mask"],
            inputs=inputs,
            meta=meta,
            top_ids=piece["top_ids"],
            top_logprobs=piece["top_logprobs"],
            target_ids=piece["target_ids"],
            target_logprob=piece["target_logprob"],
            target_rank=piece["target_rank"],
            entropy=piece["entropy"],
            kl_to_final=piece["kl_to_final"],
            logprobs=piece["logprobs"],
            apply_ln=self.apply_ln,
        )
