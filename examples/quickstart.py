"""Attach probes to a TransformerLens model and capture everything in one forward pass.

    python examples/quickstart.py

Uses the shipped default model when it is there (``tp.load_model()``); otherwise a tiny random
TransformerBridge built in code, so it runs offline anywhere.
"""

from __future__ import annotations

import torch

import tlprobes as tp


def tiny_model():
    try:
        return tp.load_model()  # the model that ships with tlprobes
    except (AttributeError, tp.TLProbesError, OSError):
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_native(
            TransformerBridgeConfig(d_model=64, d_head=16, n_heads=4, n_layers=4, n_ctx=64,
                                    d_vocab=500, d_mlp=256, act_fn="gelu_new",
                                    normalization_type="LN", positional_embedding_type="standard",
                                    seed=0)
        )


def main() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    if model.tokenizer is not None:
        prompts = ["Mary saw her brother at the market.", "John gave her a small red book."]
        her = tp.Target(" her")
    else:  # token ids only: plant token 7 as the "word" to follow
        prompts = torch.randint(8, model.cfg.d_vocab, (2, 12))
        prompts[:, 5] = 7
        her = tp.Target(7)

    result = tp.run(
        model, prompts,
        tp.Residual(positions=her),                       # x_0..x_L of the target token
        tp.Residual(positions=tp.Target(her.word, offset=-1), name="before"),
        tp.Attention(layers=[0, -1]),                     # [batch, head, dest, src]
        tp.LogitLens(top_k=3, positions="last"),
        tp.Steps(positions=her),                          # streaming: angles and step lengths
    )
    print(result)
    steps = result.steps
    for layer in range(steps.angle.shape[0]):
        print(f"block {layer}: target rotates {steps.angle[layer, :, 0].mean():6.2f} deg, "
              f"step {steps.step[layer, :, 0].mean():7.3f} "
              f"(attn {steps.attn_proj[layer, :, 0].mean():+.3f}, mlp {steps.mlp_proj[layer, :, 0].mean():+.3f})")
    lens = result.logit_lens
    print("logit lens, last position of prompt 0, top-1 per state:",
          [row[0][0] for row in (lens.top_strings(layer=i)[0] for i in range(lens.top_ids.shape[0]))])


if __name__ == "__main__":
    main()
