"""Build a demo tlprobes report from synthetic data (no model, no network).

    python examples/render_demo.py [out.html]

The report holds every renderer: angle trajectories with CI bands, the path-length decomposition,
a cosine heatmap, PCA scree and scatter, a t-SNE-style scatter, state-space trajectories,
Procrustes before/after, a token view, a logit-lens table, a circuitsvis attention view, a layer
selector and the whole-model head overview. It opens offline in any browser.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tlprobes.render import (
    Report,
    attention_layers_view,
    attention_overview,
    attention_view,
    head_summaries,
    logit_lens_table,
    plot_cosine_heatmap,
    plot_layer_profiles,
    plot_path_decomposition,
    plot_procrustes,
    plot_scatter,
    plot_scree,
    plot_trajectories,
    token_view,
)

TOKENS = [
    "<|endoftext|>",
    "When",
    " Mary",
    " met",
    " John",
    ",",
    " she",
    " gave",
    " her",
    " book",
    "<pad>",
    "<pad>",
]


def synthetic_attention(n_layer: int, n_head: int, n_pos: int, seed: int = 0) -> np.ndarray:
    """Causal softmax patterns ``[layer, head, dest, src]`` mixing sink, previous-token and noisy heads."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 1.0, (n_layer, n_head, n_pos, n_pos))
    kind = rng.integers(0, 3, (n_layer, n_head))
    idx = np.arange(n_pos)
    scores[..., 0] += np.where(kind == 0, 4.0, 0.0)[..., None]  # attention sink
    prev = (idx[:, None] - 1 == idx[None, :]).astype(float)
    scores += np.where(kind == 1, 5.0, 0.0)[..., None, None] * prev  # previous-token heads
    scores = np.where(idx[None, :] <= idx[:, None], scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    return pattern / pattern.sum(-1, keepdims=True)


def build_report() -> Report:
    rng = np.random.default_rng(0)
    n_layer, n_head = 12, 12
    layers = np.arange(n_layer + 1)
    rep = Report(
        "tlprobes demo report (synthetic data)",
        {
            "model": "synthetic-12L",
            "mode": "demo",
            "transformer_lens": "4.3.0",
            "settings": {"positions": "target", "alpha": 0.05, "correction": "bh"},
            "prompt with markup": "</script><img src=x onerror=alert(1)>",
        },
    )
    rep.add_heading("Angles")
    base = 90 * np.exp(-layers / 2.5) + 10
    curves = {
        "target": (base + 5, base + 2, base + 8),
        "non-target": (base, base - 2, base + 2),
        "control": (base + 40, base + 35, base + 45),
    }
    rep.add_figure(
        plot_layer_profiles(curves, significant=layers >= 6, title="Rotation per layer"),
        "Mean angle between consecutive residual states, 95% CI bands; stars: BH-adjusted p < .05.",
    )
    rep.add_table(
        {"layer": layers, "target": curves["target"][0], "non-target": curves["non-target"][0]},
        "Mean angle (degrees)",
        index=False,
    )
    rep.add_heading("Path length")
    attn, mlp = rng.uniform(1, 3, n_layer), rng.uniform(1, 4, n_layer)
    rep.add_figure(plot_path_decomposition(attn, mlp, attn_err=0.2 * attn, mlp_err=0.2 * mlp))
    rep.add_heading("Geometry")
    cos = np.corrcoef(
        rng.normal(size=(8, 30)) + np.linspace(0, 3, 8)[:, None] * rng.normal(size=30)
    )
    rep.add_figure(
        plot_cosine_heatmap(
            cos,
            row_labels=[f"L{i}" for i in range(8)],
            col_labels=[f"L{i}" for i in range(8)],
            title="cosine",
        )
    )
    ratio = np.sort(rng.dirichlet(np.ones(10) * 0.5))[::-1]
    rep.add_figure(plot_scree(ratio, title="PCA scree"))
    pts = np.r_[rng.normal(0, 1, (40, 2)), rng.normal(3, 1, (40, 2))]
    groups = ["noun"] * 40 + ["adjective"] * 40
    rep.add_figure(plot_scatter(pts, groups=groups, explained=ratio[:2], title="PCA"))
    rep.add_figure(plot_scatter(pts[::-1], groups=groups, method="t-SNE", title="t-SNE"))
    t = np.linspace(0, 1, n_layer + 1)[:, None]
    traj = np.stack([np.c_[np.cos(3 * t + k), np.sin(3 * t + k)] * (1 + t) for k in range(3)])
    rep.add_figure(
        plot_trajectories(traj, group_labels=["him", "her", "round"], title="trajectories")
    )
    src = rng.normal(size=(15, 2))
    theta = 0.8
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    tgt = src @ rot + rng.normal(0, 0.05, src.shape)
    rep.add_figure(plot_procrustes(src, tgt, src @ rot, disparity_before=0.8, disparity_after=0.01))
    rep.add_heading("Tokens")
    mask = np.array([t != "<pad>" for t in TOKENS])
    rep.add_view(
        token_view(
            TOKENS, rng.uniform(5, 90, len(TOKENS)), label="angle at layer 6 (deg)", mask=mask
        )
    )
    top = [[f" tok{l}_{p}" for p in range(len(TOKENS))] for l in range(n_layer)]
    top[3][2] = "</script><img src=x onerror=alert(1)>"
    probs = np.clip(
        np.linspace(0.02, 0.95, n_layer)[:, None] * rng.uniform(0.5, 1, len(TOKENS)), 0, 1
    )
    rep.add_view(logit_lens_table(top, probs, col_labels=TOKENS, mask=mask))
    rep.add_heading("Attention")
    pattern = synthetic_attention(n_layer, n_head, len(TOKENS))
    rep.add_view(attention_view(pattern, TOKENS, layer=5, heads=[0, 3, 7], mask=mask))
    rep.add_view(attention_layers_view(pattern, TOKENS, mask=mask, heads=range(6)))
    rep.add_view(attention_overview(head_summaries(pattern, mask)))
    return rep


def main(argv: list[str]) -> None:
    out = Path(argv[1] if len(argv) > 1 else "render_demo.html")
    build_report().save(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv)
