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

# attention patterns only (issue 18, goal 1-2): every layer's full pattern, all heads
DESCRIPTIONS.update({
    "rwc_pattern": "8. TL run_with_cache, names_filter = every hook_pattern",
    "nnsight_pattern": "8n. nnsight .save() of every layer's attention weights (HF, eager)",
    "tp_attention": "9. tlprobes Attention() (per-layer tensors, as run_with_cache)",
    "rwc_pattern_stacked": "8s. run_with_cache patterns + cache.stack_activation('pattern')",
    "tp_attention_stacked": "9s. tlprobes Attention() + .pattern (stacked [layer, ...])",
    "tp_attention_her": "9h. tlprobes Attention(positions=Target(' her')): one row per prompt",
    # attention kernel (goal 3): what a run that needs no pattern costs on each kernel
    "bare_sdpa": "1s. bare forward, TransformerBridge, SDPA attention (tlprobes' switch)",
    "hf_sdpa": "   bare forward, HF GPT2LMHeadModel, attn_implementation='sdpa'",
    "rwc_resid": "10r. TL run_with_cache, names_filter = the L+1 residual states (eager)",
    "nnsight_resid_sdpa": "10n. nnsight .save() of the L+1 residual states (HF, SDPA)",
    "tp_resid_eager": "10e. tlprobes Residual(), eager attention (the switch turned off)",
    "tp_resid": "10. tlprobes Residual() (SDPA: no probe needs a pattern)",
    "tp_steps_eager": "11e. tlprobes Steps(), eager attention (the switch turned off)",
})
GROUPS: dict[str, list[str]] = {
    "default": DEFAULT_METHODS[:2] + ["bare_sdpa"] + DEFAULT_METHODS[2:],
    "attention": ["bare", "rwc_pattern", "nnsight_pattern", "tp_attention", "rwc_pattern_stacked",
                  "tp_attention_stacked", "tp_attention_her"],
    "sdpa": ["bare", "bare_sdpa", "hf_bare", "hf_sdpa", "rwc_resid", "nnsight_resid_sdpa", "tp_resid_eager",
             "tp_resid", "tp_steps_eager", "tp_steps"],
}


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

    pattern_names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    resid_names = names[: L + 1]

    def rwc_pattern() -> Any:
        return br.run_with_cache(tokens, names_filter=pattern_names)[1]

    def nnsight_pattern() -> Any:
        saved: list[Any] = []
        with nn_model.trace(tokens):
            for l in range(L):
                saved.append(nn_model.transformer.h[l].attn.output[1].save())
        return saved

    def sdpa_hf(fn: Callable[[], Any]) -> Any:
        """Run fn with the HF model on SDPA (the bridge has its own copy of the config)."""
        hf.config._attn_implementation = "sdpa"
        try:
            return fn()
        finally:
            hf.config._attn_implementation = "eager"

    def nnsight_resid() -> Any:
        saved: list[Any] = []
        with nn_model.trace(tokens):
            for l in range(L):
                saved.append(nn_model.transformer.h[l].input.save())
            saved.append(nn_model.transformer.h[L - 1].output.save())
        return saved

    def fast_bridge(fn: Callable[[], Any]) -> Any:
        from tlprobes._tl.attn_impl import use_fastest

        sw = use_fastest(br, needs_pattern=False)
        try:
            return fn()
        finally:
            sw.restore()

    def eager_tp(fn: Callable[[], Any]) -> Any:
        """tp.run with tlprobes' SDPA switch turned off (what every run paid before)."""
        import tlprobes._session as sess

        keep = sess.use_fastest
        sess.use_fastest = lambda model, needs_pattern: sess.Switch([])
        try:
            return fn()
        finally:
            sess.use_fastest = keep

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
        "rwc_pattern": rwc_pattern,
        "nnsight_pattern": nnsight_pattern,
        "tp_attention": lambda: run(tp.Attention()),
        "rwc_pattern_stacked": lambda: rwc_pattern().stack_activation("pattern"),
        "tp_attention_stacked": lambda: run(tp.Attention()).attention.pattern,
        "tp_attention_her": lambda: run(tp.Attention(positions=tp.Target(her))),
        "bare_sdpa": lambda: fast_bridge(lambda: br(tokens)),
        "hf_sdpa": lambda: sdpa_hf(lambda: hf(tokens).logits),
        "rwc_resid": lambda: br.run_with_cache(tokens, names_filter=resid_names)[1],
        "nnsight_resid_sdpa": lambda: sdpa_hf(nnsight_resid),
        "tp_resid_eager": lambda: eager_tp(lambda: run(tp.Residual())),
        "tp_resid": lambda: run(tp.Residual()),
        "tp_steps_eager": lambda: eager_tp(lambda: run(tp.Steps())),
    }
    fn = fns[name]

    def call() -> Any:
        with torch.no_grad():
            return fn()

    return call


def needs(name: str) -> tuple[bool, bool]:
    """(needs the TL bridge, needs nnsight)."""
    hf_only = name in ("hf_bare", "hf_sdpa") or name.startswith("nnsight")
    return not hf_only, name.startswith("nnsight")
