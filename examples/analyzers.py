"""Every analyzer on synthetic data, no model needed (the lead will switch this to a model).

Run: python examples/analyzers.py
Each block builds data with a known answer, runs one analyzer and prints the number to check.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ortho_group

import tlprobes.analysis as ta

rng = np.random.default_rng(0)
L, B, P, D = 6, 12, 8, 64


def arc_states(step_deg: np.ndarray) -> np.ndarray:
    """[L+1, B, P, D]: each token rotates step_deg[b, p] degrees per layer in its own plane."""
    x = np.empty((L + 1, B, P, D))
    for b in range(B):
        for p in range(P):
            q, _ = np.linalg.qr(rng.normal(size=(D, 2)))
            t = np.radians(step_deg[b, p] * np.arange(L + 1))
            x[:, b, p] = np.outer(np.cos(t), q[:, 0]) + np.outer(np.sin(t), q[:, 1])
    return x * 1.05 ** np.arange(L + 1)[:, None, None, None]


# 1. Angle trajectories: the target (slot 5) rotates 15 deg/layer, its neighbours 10.
steps = np.full((B, P), 10.0) + rng.normal(0, 0.5, (B, P))
steps[:, 5] += 5.0
x = arc_states(steps)
mask = np.ones((B, P), bool)
mask[::3, 7] = False  # some right padding
traj = ta.angle_trajectory(x, np.full(B, 5), mask=mask, control="clean", seed=1)
print("angle target / before per layer:", traj.summary["target"].mean.round(1),
      traj.summary["before"].mean.round(1))
print("paired t, Bonferroni-significant layers:",
      traj.tests["target-before"].reject_bonferroni.sum(), "of", L)
print(traj.to_frame().head())
course = ta.angle_trajectory(x, np.full(B, 5), mask=mask, control="course", seed=1)
print("course control (random layer/slot, padding included):",
      course.summary["control"].mean.round(1))
within = ta.within_layer_angles(x, np.full(B, 5), mask=mask)
print("within-layer adjacent angles, layer 0:", within.summary["adjacent"].mean[0].round(1))

# 2. Path length, its decomposition and the next-token correlation.
pl = ta.path_length(x, mask)
print("mean total path", pl.summary["total"].mean.round(3), "straightness",
      pl.summary["straightness"].mean.round(3))
attn = rng.normal(size=(L, B, P, D))
mlp = rng.normal(size=(L, B, P, D))
dec = ta.decompose_steps(attn, mlp, mask=mask)
print("projection parts add up to the step:",
      np.nanmax(np.abs(dec.attn_proj + dec.mlp_proj - dec.step)))
logits = rng.normal(size=(B, P, 50))
tokens = rng.integers(0, 50, size=(B, P))
lp = ta.next_token_values(logits, tokens, mask)
print("path length vs next-token log-prob:", ta.path_logit_correlation(pl, lp, mask))

# Streaming: batches one at a time, merged == all at once.
acc_a, acc_b = ta.AngleAccumulator(), ta.AngleAccumulator()
acc_a.update(x[:, :6], mask[:6])
acc_b.update(x[:, 6:], mask[6:])
print("streamed mean angle:", acc_a.merge(acc_b).compute().summary["all"].mean.round(2))

# 3. Logit lens and the unembedding.
W_E = rng.normal(size=(50, D))
lens = ta.lens_readout(x, W_E.T, targets=tokens, mask=mask, top_k=3, ln="parameter-free")
print("KL to final per layer:", lens.summary["kl_to_final"].mean.round(3))
course_lens = ta.lens_readout(x, W_E.T, targets=tokens, mask=mask, apply_ln=False,
                            ln="parameter-free")
print("course variant (norm on x_L only):", course_lens.settings["variant"])
print("tied:", ta.weight_tying(W_E.T, W_E).tied, "effective rank:",
      round(ta.unembedding_spectrum(W_E.T).effective_rank, 2))

# 4. Geometry.
print("drift per layer:", ta.drift(x, mask).relative.round(3))
print("anisotropy per layer:", ta.anisotropy(x, mask).mean_cosine.round(3))
flat = x[:, mask].reshape(-1, D)
print("PCA k95 / participation ratio:", ta.pca(flat).k95,
      round(ta.pca(flat).participation_ratio, 2))
print("t-SNE trustworthiness:", round(ta.tsne(flat[:60], perplexity=10).trustworthiness, 3))
space = ta.state_space_trajectories(x, np.full(B, 5), mask=mask,
                                    groups=["a"] * (B // 2) + ["b"] * (B // 2))
print("state-space distance a|b per layer:", space.pc_distance["a|b"].round(2))

# 5. Procrustes: a hidden rotation is recovered.
X = rng.normal(size=(400, D))
R = ortho_group.rvs(D, random_state=0)
Y = X @ R + 0.1 * rng.normal(size=X.shape)
proc = ta.Procrustes().fit(X, Y)
print("rotation error:", round(np.linalg.norm(proc.rotation_ - R) / np.linalg.norm(R), 4),
      "P@1 NN:", ta.precision_at_k(proc.transform(X), Y))
vocab_a = {f"t{i}": i for i in range(400)}
vocab_b = {f"t{i}": 399 - i for i in range(400)}
emap = ta.map_embeddings(X, Y[::-1], vocab_a, vocab_b, normalize=False)
print("shared-vocabulary map, test P@1:", emap.scores["test"]["p_at_k_nn"],
      "shuffled baseline:", emap.scores["shuffled"]["p_at_k_nn"])

# 6. RSA and CKA.
res = ta.rsa(X[:40], 3 * X[:40] @ R, n_perm=200)
print("RSA r, p:", round(res.r, 3), res.p, "CKA:", round(ta.cka(X, Y), 3))
