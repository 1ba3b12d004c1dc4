"""Seeds 000/001: embedding geometry and attention maps: cosine matrices, PCA eigenstructure, t-SNE,
representation drift and anisotropy per layer, and interactive attention views."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .._study import StudyContext, StudyOutput
from ._common import new_report, pivot, series

__all__ = ["STUDY"]


class Geometry:
    name = "geometry"
    title = "Embedding geometry and attention maps"
    schema = {
        "exclude_first": (bool, True),
        "tsne_perplexity": (float, 10.0),
        "max_points": (int, 600),
        "attention_prompts": (int, 2),
    }

    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes._tl.adapter import adapter_for
        from tlprobes.analysis import anisotropy, cosine_matrix, drift, pca, tsne
        from tlprobes.analysis._inputs import included_mask

        a = ctx.analysis
        res = tp.run(ctx.model, ctx.prompts, tp.Residual(), tp.Attention(),
                     batch_size=ctx.batch_size, padding_side=ctx.padding_side, progress=ctx.progress)
        r = res.residual
        n_layers = r.n_layers
        out = StudyOutput()
        out.tables["drift"] = drift(r, exclude_first=a["exclude_first"]).to_frame()
        out.tables["anisotropy"] = anisotropy(r, exclude_first=a["exclude_first"]).to_frame()
        # cosine matrices between the tokens of prompt 0 at the first, middle and last state
        keep = r.mask[0]
        strs = [s for s, k in zip(res.inputs.str_tokens[0], keep.tolist()) if k]
        picks = sorted({0, n_layers // 2, n_layers})
        for layer in picks:
            out.view_data[f"cosine_x{layer}"] = torch.as_tensor(
                cosine_matrix(r.resid[layer, 0][keep].double().numpy())).float()
        # PCA eigenstructure: token embeddings (W_E rows of the prompts' tokens) and final states
        valid = torch.as_tensor(included_mask(r.mask.numpy(), a["exclude_first"]))
        ids = sorted(set(res.inputs.tokens[res.inputs.attention_mask].tolist()))
        emb = adapter_for(ctx.model).embed_weight.detach()[ids].double().cpu().numpy()
        p_emb = pca(emb)
        p_last = pca(r.resid[n_layers][valid].double().numpy())
        out.tables["pca_embeddings"] = p_emb.to_frame()
        out.tables["pca_final_state"] = p_last.to_frame()
        out.view_data["pca_emb_ratio"] = torch.as_tensor(p_emb.explained_variance_ratio).float()
        out.view_data["pca_last_ratio"] = torch.as_tensor(p_last.explained_variance_ratio).float()
        # t-SNE of token states at three depths, coloured by depth (drift made visible)
        rng = np.random.default_rng(ctx.seed)
        rows = np.flatnonzero(valid.flatten().numpy())
        rows = rng.choice(rows, size=min(len(rows), a["max_points"] // len(picks)), replace=False)
        X = np.concatenate([r.resid[layer].flatten(0, 1)[rows].double().numpy() for layer in picks])
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        groups = [f"x{layer}" for layer in picks for _ in rows]
        ts = tsne(X, perplexity=min(a["tsne_perplexity"], (len(X) - 1) / 3), random_state=ctx.seed)
        out.view_data["tsne"] = torch.as_tensor(ts.embedding).float()
        out.tables["tsne"] = ts.to_frame()
        n = min(a["attention_prompts"], len(ctx.prompts))
        out.view_data["pattern"] = res.attention.pattern[:, :n].float()
        out.view_data["attention_mask"] = res.inputs.attention_mask[:n]
        out.facts.update({
            "cosine_tokens": strs, "cosine_layers": picks, "tsne_groups": groups,
            "str_tokens": [res.inputs.str_tokens[b] for b in range(n)], "n_layers": n_layers,
            "n_prompts": len(ctx.prompts), "n_tokens": int(valid.sum()),
            "pca_embeddings_k95": int(p_emb.k95), "pca_final_k95": int(p_last.k95),
            "pca_embeddings_pr": float(p_emb.participation_ratio),
            "tsne_trustworthiness": float(ts.trustworthiness),
        })
        out.arrays.update({"resid": r.resid, "mask": r.mask, "pattern": res.attention.pattern})
        return out

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import (
            attention_layers_view,
            attention_overview,
            head_summaries,
            plot_cosine_heatmap,
            plot_layer_profiles,
            plot_scatter,
            plot_scree,
        )

        f = out.facts
        report = new_report(
            manifest, self.title,
            f"Geometry of the residual stream over {f['n_tokens']} tokens of {f['n_prompts']} prompts "
            "(padding and each prompt's first token excluded): how far representations move per "
            "layer (drift), how aligned random tokens are (anisotropy), the eigenstructure of the "
            "embeddings, and what the attention heads look at.",
        )
        report.add_heading("Representation drift and anisotropy")
        dr, an = out.tables["drift"], out.tables["anisotropy"]
        layers, rel = series(dr, "drift", "relative")
        nan = np.full_like(rel, np.nan)
        report.add_figure(plot_layer_profiles(
            {"relative drift |Z_l - Z_(l-1)| / |Z_(l-1)|": (rel, nan, nan),
             "cosine drift 1 - mean cos": (series(dr, "drift", "cosine")[1], nan, nan)},
            layers=list(layers), ylabel="drift", title="Drift between consecutive layers"))
        al, mc = series(an, "anisotropy", "mean_cosine")
        report.add_figure(plot_layer_profiles(
            {"mean cosine of token pairs": (mc, np.full_like(mc, np.nan), np.full_like(mc, np.nan))},
            layers=list(al), ylabel="mean cosine", title="Anisotropy per state"))
        report.add_table(pd.concat([pivot(dr, [("drift", "fro"), ("drift", "relative"),
                                              ("drift", "cosine"), ("drift", "cka")])], axis=1),
                         caption="drift per layer: Frobenius, relative, cosine, linear CKA")
        report.add_heading("Cosine similarity between the tokens of prompt 0")
        for layer in f["cosine_layers"]:
            report.add_figure(plot_cosine_heatmap(
                out.view_data[f"cosine_x{layer}"].double().numpy(), row_labels=f["cosine_tokens"],
                col_labels=f["cosine_tokens"], title=f"state x{layer}"))
        report.add_heading("PCA eigenstructure")
        report.add_text(
            f"Token embeddings: 95% of variance in {f['pca_embeddings_k95']} components "
            f"(participation ratio {f['pca_embeddings_pr']:.1f}); final states: "
            f"{f['pca_final_k95']} components. PCA is mean-centred (the uncentred top "
            "eigenvector would only find the mean direction).")
        report.add_figure(plot_scree({"token embeddings (W_E)": out.view_data["pca_emb_ratio"].double().numpy(),
                                      "final states x_L": out.view_data["pca_last_ratio"].double().numpy()},
                                     n=20, title="Explained variance ratio"))
        report.add_heading("t-SNE of token states at three depths")
        report.add_figure(plot_scatter(out.view_data["tsne"].double().numpy(), groups=f["tsne_groups"],
                                       method="t-SNE",
                                       title=f"t-SNE (trustworthiness {f['tsne_trustworthiness']:.2f})"),
                          caption="distances between t-SNE clusters are not interpretable")
        report.add_heading("Attention")
        pattern = out.view_data["pattern"].double().numpy()
        amask = out.view_data["attention_mask"].numpy()
        for b, strs in enumerate(f["str_tokens"]):
            report.add_view(attention_overview(head_summaries(pattern[:, b], amask[b])),
                            caption=f"prompt {b}: head summaries (pick a metric; hover for values)")
            report.add_view(attention_layers_view(pattern[:, b], strs, mask=amask[b]),
                            caption=f"prompt {b}: attention by layer")
        return report


STUDY = Geometry()
