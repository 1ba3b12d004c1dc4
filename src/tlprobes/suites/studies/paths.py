"""Path length through the residual stream, its attention/MLP decomposition, and its relation to
the next token's log-prob (lectures 227-229)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .._study import StudyContext, StudyOutput
from ._common import curve, new_report, pivot, series

__all__ = ["STUDY"]


class Paths:
    name = "paths"
    title = "Path length and its attention/MLP decomposition"
    schema = {
        "exclude_first": (bool, True),
        "show_prompts": (int, 3),
    }

    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes.analysis import decompose_steps, path_length, path_logit_correlation

        a = ctx.analysis
        res = tp.run(
            ctx.model, ctx.prompts, tp.Residual(), tp.Components(), tp.LogitLens(top_k=1),
            batch_size=ctx.batch_size, padding_side=ctx.padding_side, progress=ctx.progress,
        )
        pl = path_length(res.residual, exclude_first=a["exclude_first"])
        dec = decompose_steps(res.components, exclude_first=a["exclude_first"])
        out = StudyOutput()
        out.tables["path_length"] = pl.to_frame()
        out.tables["decomposition"] = dec.to_frame()
        # the next token's log-prob under the model (final state of the logit lens)
        next_lp = res.logit_lens.target_logprob[-1].double().numpy()
        rows = []
        for which in ("total", "last_step"):
            c = path_logit_correlation(pl, next_lp, res.residual.mask, which=which,
                                       exclude_first=a["exclude_first"])
            rows.append({"path": which, "n": c.n, "pearson_r": c.pearson_r, "pearson_p": c.pearson_p,
                         "spearman_r": c.spearman_r, "spearman_p": c.spearman_p})
        out.tables["path_vs_next_logprob"] = pd.DataFrame(rows)
        n = min(a["show_prompts"], len(ctx.prompts))
        import torch

        out.view_data["token_path"] = torch.as_tensor(pl.total[:n]).float()
        out.view_data["token_next_logprob"] = torch.as_tensor(next_lp[:n]).float()
        out.view_data["mask"] = res.inputs.attention_mask[:n]
        out.facts.update({
            "str_tokens": [res.inputs.str_tokens[b] for b in range(n)],
            "n_layers": res.residual.n_layers,
            "n_prompts": len(ctx.prompts),
            "n_tokens": int(pl.included.sum()),
        })
        out.arrays.update({"resid": res.residual.resid, "attn_out": res.components.attn_out,
                             "mlp_out": res.components.mlp_out, "mask": res.residual.mask})
        return out

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import plot_layer_profiles, plot_path_decomposition, token_view

        f = out.facts
        report = new_report(
            manifest, self.title,
            f"Step lengths |x_l - x_(l-1)| of every token ({f['n_tokens']} tokens from "
            f"{f['n_prompts']} prompts, first token of each prompt excluded, padding never counted). "
            "Each step splits exactly into attention and MLP parts by projecting attn_out and mlp_out "
            "onto the step direction (the two parts sum to the step length).",
        )
        pdf, ddf = out.tables["path_length"], out.tables["decomposition"]
        report.add_heading("Step length per layer")
        layers, _ = series(pdf, "step", "mean")
        report.add_figure(plot_layer_profiles(
            {"step length": curve(pdf, "step")}, layers=list(layers), ylabel="|x_l - x_(l-1)|",
            title="Mean step length with 95% CI"))
        report.add_heading("Attention vs MLP share of each step")
        _, attn = series(ddf, "attn_proj", "mean")
        dl, mlp = series(ddf, "mlp_proj", "mean")
        _, attn_sem = series(ddf, "attn_proj", "sem")
        _, mlp_sem = series(ddf, "mlp_proj", "sem")
        report.add_figure(plot_path_decomposition(
            attn, mlp, attn_err=1.96 * attn_sem, mlp_err=1.96 * mlp_sem, layers=list(dl),
            ylabel="projection on the step (additive)", title="Decomposition of each block's step"),
            caption="mean ± 1.96 SEM over tokens; attention + MLP = step length exactly")
        report.add_table(pivot(ddf, [("step", "mean"), ("attn_proj", "mean"), ("mlp_proj", "mean"),
                                     ("cos_attn_mlp", "mean"), ("attn_norm", "mean"),
                                     ("mlp_norm", "mean")]),
                         caption="per block: step, projections, cos(attn_out, mlp_out), norms")
        report.add_heading("Path length and the next token")
        report.add_table(out.tables["path_vs_next_logprob"].round(4),
                         caption="correlation of path length with the log-prob the model gives the "
                                 "next token (last valid position of each prompt excluded)")
        report.add_heading("Tokens coloured by total path length")
        mask = out.view_data["mask"]
        for b, strs in enumerate(f["str_tokens"]):
            report.add_view(token_view(strs, {
                "path length": out.view_data["token_path"][b].double().numpy(),
                "next-token log-prob": out.view_data["token_next_logprob"][b].double().numpy()},
                mask=mask[b].numpy(), label=f"prompt {b}"))
        return report


STUDY = Paths()
