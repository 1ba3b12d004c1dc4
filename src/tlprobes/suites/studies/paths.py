"""Path length through the residual stream, its attention/MLP decomposition, and its relation to
the next token's log-prob (lectures 227-229).

``[analysis] streaming = true`` (suite ``path_length_stream``) is the dataset-scale variant: one
``tp.Steps()`` probe, which keeps a few float64 scalars per token and layer (step length, angle,
the attention/MLP split) instead of the residual, attention and MLP vectors, so 100,000 prompts
fit in memory and every shard's commit stays small. Its ``path_length`` and ``decomposition`` tables
come from the same analyzers and equal the dense run's per-layer numbers; it adds ``angles`` (the
rotation between consecutive states) and ``summary`` (per block: mean step, mean angle and the
attention/MLP share of the step). What needs vectors is absent: straightness and the course drifts
are NaN, and there is no next-token correlation (the dense suite captures the logit lens for it)."""

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
        "streaming": (bool, False),
    }

    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes.analysis import decompose_steps, path_length, path_logit_correlation

        a = ctx.analysis
        if a["streaming"]:
            return self._compute_streaming(ctx)
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

    def _compute_streaming(self, ctx: StudyContext) -> StudyOutput:
        import torch

        import tlprobes as tp
        from tlprobes.analysis import AngleAccumulator, decompose_steps, path_length

        a = ctx.analysis
        res = tp.run(ctx.model, ctx.prompts, tp.Steps(), batch_size=ctx.batch_size,
                     padding_side=ctx.padding_side, progress=ctx.progress)
        st = res.steps
        pl = path_length(st, exclude_first=a["exclude_first"])
        dec = decompose_steps(st, exclude_first=a["exclude_first"])
        acc = AngleAccumulator(exclude_first=a["exclude_first"])
        acc.update(st)
        ang = acc.compute()
        out = StudyOutput()
        out.tables["path_length"] = pl.to_frame()
        out.tables["decomposition"] = dec.to_frame()
        out.tables["angles"] = ang.summary["all"].to_frame("angle", layers=ang.layers)
        out.tables["summary"] = _summary(out.tables)
        n = min(a["show_prompts"], len(ctx.prompts))
        out.view_data["token_path"] = torch.as_tensor(pl.total[:n]).float()
        out.view_data["mask"] = res.inputs.attention_mask[:n]
        out.facts.update({
            "str_tokens": [res.inputs.str_tokens[b] for b in range(n)],
            "n_layers": int(st.step.shape[0]),
            "n_prompts": len(ctx.prompts),
            "n_tokens": int(pl.included.sum()),
            "streaming": True,
        })
        out.arrays.update({k: getattr(st, k) for k in ("step", "angle", "norm", "attn_proj",
                                                       "mlp_proj", "mask")})
        return out

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import plot_layer_profiles, plot_path_decomposition, token_view

        f = out.facts
        report = new_report(
            manifest, self.title,
            f"Step lengths |x_l - x_(l-1)| of every token ({f['n_tokens']} tokens from "
            f"{f['n_prompts']} prompts, first token of each prompt excluded, padding never counted). "
            "Each step splits exactly into attention and MLP parts by projecting attn_out and mlp_out "
            "onto the step direction (the two parts sum to the step length)."
            + (" Streaming run (tp.Steps): only per-token scalars were kept, so straightness "
               "and the next-token correlation need the dense suite (path_length)."
               if f.get("streaming") else ""),
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
            xlabel="block b (its step x_b -> x_(b+1) is layer b+1 above)",
            ylabel="projection on the step (additive)", title="Decomposition of each block's step"),
            caption="mean ± 1.96 SEM over tokens; attention + MLP = step length exactly")
        report.add_table(pivot(ddf, [("step", "mean"), ("attn_proj", "mean"), ("mlp_proj", "mean"),
                                     ("cos_attn_mlp", "mean"), ("attn_norm", "mean"),
                                     ("mlp_norm", "mean")]),
                         caption="per block: step, projections, cos(attn_out, mlp_out), norms")
        if "angles" in out.tables:
            adf = out.tables["angles"]
            report.add_heading("Rotation between consecutive states")
            al, _ = series(adf, "angle", "mean")
            report.add_figure(plot_layer_profiles(
                {"angle(x_(l-1), x_l)": curve(adf, "angle")}, layers=list(al),
                title="Mean angle per layer with 95% CI"))
            report.add_table(out.tables["summary"],
                             caption="per block: mean step, mean angle, mean path length so "
                                     "far, attention and MLP share of the step (ratio of mean "
                                     "projections)")
        if "path_vs_next_logprob" in out.tables:
            report.add_heading("Path length and the next token")
            report.add_table(out.tables["path_vs_next_logprob"].round(4),
                             caption="correlation of path length with the log-prob the model gives "
                                     "the next token (last valid position of each prompt excluded)")
        report.add_heading("Tokens coloured by total path length")
        mask = out.view_data["mask"]
        for b, strs in enumerate(f["str_tokens"]):
            values = {"path length": out.view_data["token_path"][b].double().numpy()}
            if "token_next_logprob" in out.view_data:
                nxt = out.view_data["token_next_logprob"][b]
                values["next-token log-prob"] = nxt.double().numpy()
            report.add_view(token_view(strs, values, mask=mask[b].numpy(), label=f"prompt {b}"))
        return report


def _summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per block b (the step x_b -> x_(b+1)): means read from the tidy tables, and the
    attention/MLP share of the mean step. ``attn_share + mlp_share`` is 1 up to the float32 rounding
    of the model's residual additions (~1e-9): tp.Steps projects attn_out and mlp_out on the model's
    own step x_(l+1) - x_l."""
    dec, pdf, adf = tables["decomposition"], tables["path_length"], tables["angles"]
    blocks, step = series(dec, "step", "mean")
    out = pd.DataFrame({"block": blocks, "n": series(dec, "step", "n")[1], "step_mean": step,
                        "step_sem": series(dec, "step", "sem")[1],
                        "angle_mean": series(adf, "angle", "mean")[1],
                        "angle_sem": series(adf, "angle", "sem")[1],
                        "cumulative_mean": series(pdf, "cumulative", "mean")[1],
                        "attn_proj_mean": series(dec, "attn_proj", "mean")[1],
                        "mlp_proj_mean": series(dec, "mlp_proj", "mean")[1]})
    out["attn_share"] = out["attn_proj_mean"] / out["step_mean"]
    out["mlp_share"] = out["mlp_proj_mean"] / out["step_mean"]
    return out


STUDY = Paths()
