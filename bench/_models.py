"""Random-weight GPT-2-shaped models and the inputs every method sees (bench only).

Every process (the timing process and each memory worker) builds the same weights from the same
seed, so no checkpoint has to be written or read. The HF model is the one nnsight wraps; the
TransformerBridge wraps a structural copy of it that *shares* the parameter tensors (the bridge
swaps submodules in place, so it must not get the HF module itself, but there is no need to hold
the weights twice).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    # name: layers, d_model, heads, vocab, default batch and sequence length
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, vocab=1000, batch=2, seq=32),
    # GPT-2-small depth at a width where per-op overhead, not arithmetic, dominates the pass: on a
    # CPU it stands in for a launch-bound GPU pass (what hooks and per-hook work cost there)
    "overhead": dict(n_layer=12, n_embd=64, n_head=4, vocab=1000, batch=8, seq=64),
    "small": dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, batch=2, seq=64),
    # long contexts (1 x 4096) at a width where the [head, dest, src] patterns (4 x 16.8M floats a
    # layer) dominate memory, while 4 layers keep the bridge's own kept patterns near 1 GiB
    "long": dict(n_layer=4, n_embd=256, n_head=4, vocab=1000, batch=1, seq=4096),
    "xl": dict(n_layer=48, n_embd=1600, n_head=25, vocab=50257, batch=1, seq=64),
}
HER_ID = 607  # GPT-2's " her"; planted once per prompt so tp.Target(607) finds it


@dataclass
class Setup:
    hf: Any  # GPT2LMHeadModel (eager attention)
    bridge: Any  # TransformerBridge over a copy sharing hf's weights (None if not asked for)
    tokens: Any  # LongTensor [batch, seq] on the model's device
    device: str
    n_layers: int


def make_tokens(batch: int, seq: int, vocab: int, seed: int = 1) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    her = HER_ID if HER_ID < vocab else vocab - 1
    tokens = torch.randint(0, vocab, (batch, seq), generator=g)
    tokens[tokens == her] = (her + 1) % vocab
    # " her" at a random position >= 1 in each prompt (so offset -1 is valid)
    where = torch.randint(1, seq, (batch,), generator=g)
    tokens[torch.arange(batch), where] = her
    return tokens


def her_id(vocab: int) -> int:
    return HER_ID if HER_ID < vocab else vocab - 1


def build(size: str, batch: int, seq: int, device: str, *, bridge: bool = True, seed: int = 0) -> Setup:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    s = SIZES[size]
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"], vocab_size=s["vocab"],
        n_positions=max(1024, seq), n_ctx=max(1024, seq), attn_implementation="eager",
        architectures=["GPT2LMHeadModel"],
    )
    hf = GPT2LMHeadModel(cfg).eval()
    hf.config._attn_implementation = "eager"
    br = None
    if bridge:
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

        shared = {id(t): t for t in list(hf.parameters()) + list(hf.buffers())}
        br = build_bridge_from_module(
            copy.deepcopy(hf, memo=shared), "GPT2LMHeadModel", hf_config=hf.config, tokenizer=None
        )
        br.eval()
    if device != "cpu":
        hf.to(device)
        if br is not None:
            br.to(device)
    tokens = make_tokens(batch, seq, s["vocab"]).to(device)
    return Setup(hf=hf, bridge=br, tokens=tokens, device=device, n_layers=s["n_layer"])
