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
        return report


STUDY = Angles()
