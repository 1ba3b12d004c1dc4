"""The methods under test: each takes a :class:`_models.Setup` and returns what the user keeps.

Every method sees the same model and the same token ids and runs under ``torch.no_grad()``. What a
method returns is kept alive while its peak memory is read, so captures count against it.

"Sites" everywhere means what ``tp.Residual()`` + ``tp.Attention()`` hook: ``resid_pre`` of every
block, ``resid_post`` of the last block (the L+1 residual states) and every block's attention
pattern. The logit lens by hand computes the same numbers ``tp.LogitLens(top_k=5)`` keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _models import Setup, her_id

TOP_K = 5

# name -> (description for the table, needs the bridge, needs nnsight)
DESCRIPTIONS: dict[str, str] = {
    "bare": "1. bare forward, TransformerBridge (the floor)",
    "hf_bare": "   bare forward, HF GPT2LMHeadModel (reference)",
    "rwc_all": "2. TL run_with_cache, everything",
    "rwc_sites": "3. TL run_with_cache, names_filter = tlprobes' sites",
    "nnsight_sites": "4. nnsight trace + .save() of the same sites (HF model)",
    "tp_sites": "5a. tlprobes Residual() + Attention()",
    "rwc_sites_lens": "3+. run_with_cache(names_filter) + logit lens by hand",
    "nnsight_sites_lens": "4+. nnsight sites + logit lens by hand",
    "tp_full": "5. tlprobes Residual() + Attention() + LogitLens(top_k=5)",
    "tp_positions": "6. tlprobes Residual at Target(' her') and offset -1",
    "tp_steps": "7. tlprobes Steps() (angles, step/path lengths), all positions",
    "tp_steps_her": "7b. tlprobes Steps() at Target(' her')",
}
DEFAULT_METHODS = list(DESCRIPTIONS)


def site_names(n_layers: int) -> list[str]:
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    names.append(f"blocks.{n_layers - 1}.hook_resid_post")
    names += [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    return names


def lens_by_hand(states: list[Any], tokens: Any, hf: Any, top_k: int = TOP_K) -> dict[str, Any]:
    """The numbers tp.LogitLens keeps (top-k, next-token log-prob and rank, entropy, KL to final)."""
    import torch
    import torch.nn.functional as F

    ln = hf.transformer.ln_f
    W = hf.lm_head.weight  # [vocab, d_model]

    def logprobs(x: Any) -> Any:
        h = F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)
        return torch.log_softmax(F.linear(h, W).float(), dim=-1)

    nxt = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)
    has = torch.ones_like(tokens, dtype=torch.bool)
    has[:, -1] = False
    final = logprobs(states[-1])
    p_final = final.exp()
    out: dict[str, list[Any]] = {k: [] for k in ("ids", "top", "tlp", "rank", "ent", "kl")}
    for i, x in enumerate(states):
        lp = final if i == len(states) - 1 else logprobs(x)
        top = lp.topk(top_k, dim=-1)
        out["ids"].append(top.indices)
        out["top"].append(top.values)
        t = lp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        out["tlp"].append(torch.where(has, t, torch.nan))
        out["rank"].append(torch.where(has, (lp > t.unsqueeze(-1)).sum(-1), -1))
        out["ent"].append(-(lp.exp() * lp).sum(-1))
        out["kl"].append((p_final * (final - lp)).sum(-1))
    return {k: torch.stack(v) for k, v in out.items()}


def make(name: str, s: Setup, nn_model: Any = None) -> Callable[[], Any]:
    """A zero-argument callable running method ``name`` once and returning what it keeps."""
    import torch

    import tlprobes as tp

    br, hf, tokens, L = s.bridge, s.hf, s.tokens, s.n_layers
    B = tokens.shape[0]
    store = "cpu" if s.device == "cpu" else None  # keep captures where run_with_cache keeps them
    names = site_names(L)
    her = her_id(hf.config.vocab_size)

    def run(*probes: Any) -> Any:
        return tp.run(br, tokens, *probes, batch_size=B, progress=False, device=store)

    def rwc_sites() -> Any:
        _, cache = br.run_with_cache(tokens, names_filter=names)
        return cache

    def nnsight_sites() -> Any:
        saved: list[Any] = []
        with nn_model.trace(tokens):
            for l in range(L):
                saved.append(nn_model.transformer.h[l].input.save())
                saved.append(nn_model.transformer.h[l].attn.output[1].save())
            saved.append(nn_model.transformer.h[L - 1].output.save())
        return saved

    def states_of_cache(cache: Any) -> list[Any]:
        return [cache[n] for n in names[: L + 1]]

    fns: dict[str, Callable[[], Any]] = {
        "bare": lambda: br(tokens),
        "hf_bare": lambda: hf(tokens).logits,
        "rwc_all": lambda: br.run_with_cache(tokens)[1],
        "rwc_sites": rwc_sites,
        "nnsight_sites": nnsight_sites,
        "tp_sites": lambda: run(tp.Residual(), tp.Attention()),
        "rwc_sites_lens": lambda: (lambda c: (c, lens_by_hand(states_of_cache(c), tokens, hf)))(
            rwc_sites()
        ),
        "nnsight_sites_lens": lambda: (
            lambda sv: (sv, lens_by_hand(sv[0:2 * L:2] + [sv[-1]], tokens, hf))
        )(nnsight_sites()),
        "tp_full": lambda: run(tp.Residual(), tp.Attention(), tp.LogitLens(top_k=TOP_K)),
        "tp_positions": lambda: run(
            tp.Residual(positions=tp.Target(her), name="her"),
            tp.Residual(positions=tp.Target(her, offset=-1), name="before_her"),
        ),
        "tp_steps": lambda: run(tp.Steps()),
        "tp_steps_her": lambda: run(tp.Steps(positions=tp.Target(her))),
    }
    fn = fns[name]

    def call() -> Any:
        with torch.no_grad():
            return fn()

    return call


def needs(name: str) -> tuple[bool, bool]:
    """(needs the TL bridge, needs nnsight)."""
    return name != "hf_bare" and not name.startswith("nnsight"), name.startswith("nnsight")
