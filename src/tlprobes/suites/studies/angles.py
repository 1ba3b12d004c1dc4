"""Seed 003: rotation angles of a target token (" her") across layers, vs the word before it and a
random control, with a paired t-test per layer. The course protocol and the clean one side by side."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._study import StudyContext, StudyOutput
from ._common import curve, new_report, pivot, series

__all__ = ["STUDY"]


class Angles:
    name = "angles"
    title = "Rotation angles across layers"
    schema = {
        "controls": ([str], ["course", "clean"]),
        "exclude_first": (bool, True),
        "alpha": (float, 0.05),
        "bonferroni": (str, "bonferroni"),
        "final_state": (str, "raw"),
        "show_prompts": (int, 3),
    }

    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes.analysis import CONTROLS, angle_trajectory, within_layer_angles

        a = ctx.analysis
        for c in a["controls"]:
            if c not in CONTROLS:
                from .._schema import SuiteError

                raise SuiteError(f"unknown control {c!r} in [analysis] controls; valid: {list(CONTROLS)}")
        # the course batch-tokenises every sentence at once, so its control's "padding" is the
        # model's own padding activations; one batch reproduces that (merging batches of different
        # lengths would add empty slots instead)
        batch_size = len(ctx.prompts) if "course" in a["controls"] else ctx.batch_size
        res = tp.run(
            ctx.model, ctx.prompts,
            tp.Residual(final_state=a["final_state"]),
            tp.Steps(),
            batch_size=batch_size, padding_side=ctx.padding_side, progress=ctx.progress,
        )
        r = res.residual
        out = StudyOutput()
        target_slots = None
        for control in a["controls"]:
            at = angle_trajectory(
                r, ctx.target, control=control, exclude_first=a["exclude_first"], seed=ctx.seed,
                alpha=a["alpha"], bonferroni=a["bonferroni"],
            )
            out.tables[f"angles_{control}"] = at.to_frame()
            target_slots = at.target_slots
            rows = []
            for cond, arr in at.angles.items():
                for layer_i, layer in enumerate(at.layers):
                    for s in range(arr.shape[1]):
                        rows.append((int(layer), s, cond, float(arr[layer_i, s])))
            import pandas as pd

            out.tables[f"angles_{control}_per_sentence"] = pd.DataFrame(
                rows, columns=["layer", "sentence", "condition", "angle_deg"]
            )
        within = within_layer_angles(r, ctx.target, exclude_first=a["exclude_first"], seed=ctx.seed)
        out.tables["within_layer"] = within.to_frame()
        n = min(a["show_prompts"], len(ctx.prompts))
        out.view_data["token_mean_angle"] = res.steps.angle[:, :n].nanmean(0).float()
        out.view_data["mask"] = res.inputs.attention_mask[:n]
        out.facts.update({
            "str_tokens": [res.inputs.str_tokens[b] for b in range(n)],
            "target": ctx.target,
            "target_slots": np.asarray(target_slots).tolist() if target_slots is not None else None,
            "n_layers": r.n_layers,
            "n_sentences": len(ctx.prompts),
            "controls": a["controls"],
        })
        out.captures["resid"] = r.resid
        out.captures["mask"] = r.mask
        _which_heads(ctx, out)
        return out

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import plot_angle_trajectories, token_view

        f = out.facts
        a = manifest["suite"]["analysis"]
        report = new_report(
            manifest, self.title,
            f"Angle (degrees) between the vectors of {f['target']!r} at consecutive layers "
            f"(x_l-1 -> x_l, l = 1..{f['n_layers']}), the word just before it, and a random control, "
            f"over {f['n_sentences']} sentences. Paired t-test per layer (target vs before), "
            f"{a['bonferroni']} and FDR-BH corrected; bands are 95% CIs. Angles use the stable "
            "2·atan2(|u^-v^|, |u^+v^|) in float64.",
        )
        names = {"course": "course control (random layer and position, padding included)",
                 "clean": "clean control (layer-matched, valid tokens only)",
                 "layer_matched": "layer-matched anisotropy baseline"}
        for control in f["controls"]:
            df = out.tables[f"angles_{control}"]
            report.add_heading(names.get(control, control))
            layers, reject = series(df, "target-before", "reject_fdr_bh")
            sig = reject > 0.5
            fig = plot_angle_trajectories(
                {"target": curve(df, "target"), "non-target (word before)": curve(df, "before"),
                 "control": curve(df, "control")},
                significant=sig, layers=list(layers),
                title=f"Rotation per layer, {control} control",
                sig_label="target ≠ before (FDR-BH q < .05)",
            )
            report.add_figure(fig, caption=f"{int(sig.sum())} of {len(sig)} layers differ (FDR-BH).")
            report.add_table(pivot(df, [
                ("target", "mean"), ("before", "mean"), ("control", "mean"),
                ("target-before", "t"), ("target-before", "p_bonferroni"),
                ("target-before", "p_fdr_bh"), ("target-before", "d_z"),
            ]), caption="per layer: mean angles, paired t (target - before), adjusted p, d_z")
        report.add_heading("Tokens coloured by mean rotation across layers")
        vals = out.view_data["token_mean_angle"]
        mask = out.view_data["mask"]
        for b, strs in enumerate(f["str_tokens"]):
            report.add_view(token_view(strs, vals[b].double().numpy(), mask=mask[b].numpy(),
                                       label=f"sentence {b}: mean angle (deg)"))
        _render_which_heads(report, out)
        return report


STUDY = Angles()


# ----------------------------------------------------------------------------------------------
# Which heads turn the target (issue 16): a self-contained section, called once from compute and
# once from render.
def _which_heads(ctx: StudyContext, out: StudyOutput) -> None:
    """Per-head attribution of each block's rotation at the target vs the word before it."""
    import tlprobes as tp
    from tlprobes.analysis import head_contrast, head_ranking

    probe = tp.HeadSteps(positions=tp.Target(ctx.target), baseline=tp.Target(ctx.target, offset=-1))
    hs = tp.run(ctx.model, ctx.prompts, probe, batch_size=ctx.batch_size,
                padding_side=ctx.padding_side, progress=ctx.progress).head_steps
    out.tables["heads_contrast_angle"] = head_contrast(hs, "angle", correction="fdr_bh").to_frame()
    out.tables["heads_ranking_angle"] = head_ranking(hs, "angle").to_frame()
    out.tables["heads_ranking_dla"] = head_ranking(hs, "dla").to_frame()
    out.facts["heads_parts"] = list(hs.parts)


def _render_which_heads(report: Any, out: StudyOutput) -> None:
    if "heads_contrast_angle" not in out.tables:  # a run directory from before this section
        return
    from ...render import plot_head_heatmap

    df = out.tables["heads_contrast_angle"]
    target = out.facts.get("target")
    parts = out.facts.get("heads_parts") or sorted(set(df["part"]), key=list(df["part"]).index)

    def grid(col: str) -> np.ndarray:
        return df.pivot(index="layer", columns="part", values=col)[parts].to_numpy(dtype=float)

    report.add_heading(f"Which heads turn {target!r}")
    report.add_text(
        f"Each block's rotation of {target!r} (the angle between x_l and x_l+1) split over its "
        "attention heads, the attention output bias and the MLP, in proportion to each part's push "
        "perpendicular to x_l (the shares add up to the block's angle exactly). Computed inside "
        "the hooks by tp.HeadSteps; only scalars are kept. First: the mean share (degrees) at the "
        "target over sentences. Second: the paired difference target - word before; outlined "
        "cells differ (paired t-test across sentences, FDR-BH over all block x part cells, "
        "q < .05). Block l moves x_l to x_l+1, so block 0 is layer 1 of the angle tables above."
    )
    fig = plot_head_heatmap(grid("target_mean"), head_labels=parts, ylabel="block",
                            colorbar_label="angle share (deg)",
                            title=f"Rotation share at {target!r}")
    report.add_figure(fig, caption="Mean angle share per block and part at the target.")
    fig = plot_head_heatmap(grid("diff_mean"), marks=grid("reject") > 0.5, head_labels=parts,
                            ylabel="block",
                            colorbar_label="target - before (deg)",
                            title=f"{target!r} minus the word before it",
                            mark_label="FDR-BH q < .05")
    n_sig = int((df["reject"] > 0.5).sum())
    report.add_figure(fig, caption=f"{n_sig} of {len(df)} block x part cells differ (FDR-BH).")
    top = df[(df["head"] >= 0) & (df["t"] > 0)].sort_values("t", ascending=False).head(10)
    report.add_table(
        top[["layer", "part", "target_mean", "baseline_mean", "diff_mean", "diff_ci_low",
             "diff_ci_high", "t", "p_fdr_bh", "d_z"]].rename(columns={"layer": "block"})
        .reset_index(drop=True),
        caption=f"The heads that turn {target!r} more than the word before it, largest paired t "
        "first.",
    )
