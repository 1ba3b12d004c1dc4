"""Seed 003: rotation angles of a target token (" her") across layers, vs the word before it and a
random control, with a paired t-test per layer. Two columns side by side:

* **course**: the course notebook's computation (lecture 225): no BOS, every prompt padded as one
  batch of all prompts would be (right padding, pad = EOS), the final state ln_f(x_L) (HF's last
  hidden state), a control of two independent (layer in 1..L, any padded position) draws per
  (sentence, layer), plotted and not tested, and Bonferroni with m = L+1;
* **clean**: the protocol tlprobes recommends (each difference is stated in the report, see
  ``CLEAN_CHANGES``).

Sections of the report, in order (each a method of :class:`Angles`): protocol, one per control
column, what the clean protocol changes, attention vs MLP, tokens coloured by rotation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._study import StudyContext, StudyOutput
from ._common import curve, new_report, pivot, series

__all__ = ["STUDY", "CLEAN_CHANGES"]

#: point by point, what the clean column changes from the course's and why (printed in the report)
CLEAN_CHANGES = [
    ("BOS", "none, as GPT-2's HF tokenizer encodes", "prepended, as the model was trained",
     "without it the first word becomes the attention sink, and its states (and everything "
     "attending to it) are off-distribution"),
    ("final state", "ln_f(x_L) (HF's last hidden state)", "raw x_L",
     "ln_f is a re-scaling for the unembedding, not a block: the last 'rotation' of the course "
     "mixes the final norm into the last block"),
    ("control", "two independent draws, each a random layer in 1..L and any position of the "
     "padded row, padding included", "layer-matched: angle(x_(l-1)[i], x_l[j]) for two distinct "
     "real tokens i != j, first token excluded",
     "a control per layer must vary with the layer like the conditions it is compared with; "
     "padding and the first token are not text"),
    ("control test", "plotted, not tested",
     "paired t-test target vs control beside target vs before",
     "a control is only informative if it is compared"),
    ("correction", "Bonferroni with m = L+1 (.05/n_hiddens)", "Bonferroni with m = L tests, and "
     "FDR-BH", "there are L tests, not L+1"),
    ("batches", "one batch of all sentences", "batches of [run] batch_size, right padding",
     "real-token states do not depend on the batch (tested); only the course's control reads "
     "padding, so only the course column pads every prompt to the longest"),
]


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
        "n_resamples": (int, 9999),
    }

    # ------------------------------------------------------------------------------ compute
    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes.analysis import CONTROLS, angle_trajectory, layer_angles, within_layer_angles
        from tlprobes.analysis._angles import rotation_decomposition

        a = ctx.analysis
        for c in a["controls"]:
            if c not in CONTROLS:
                from .._schema import SuiteError

                raise SuiteError(
                    f"unknown control {c!r} in [analysis] controls; valid: {list(CONTROLS)}")
        out = StudyOutput()
        kw = dict(seed=ctx.seed, alpha=a["alpha"], n_resamples=a["n_resamples"])
        # the clean run: BOS as trained, raw x_L (by default), resid_mid for the attention/MLP split
        clean = tp.run(ctx.model, ctx.prompts,
                       tp.Residual(final_state=a["final_state"], mid=True),
                       batch_size=ctx.batch_size, padding_side=ctx.padding_side,
                       progress=ctx.progress)
        r = clean.residual
        protocols: dict[str, dict[str, Any]] = {}
        target_slots = None
        for control in a["controls"]:
            if control == "course":
                # the course's run: no BOS, ln_f(x_L), every prompt padded (right, pad = EOS) to
                # the longest, so each row is what one batch of all sentences gives, whatever
                # batch_size; its control draws from those rows
                course = tp.run(ctx.model, ctx.prompts, tp.Residual(final_state="ln_f"),
                                batch_size=ctx.batch_size, padding_side="right", prepend_bos=False,
                                pad_to="longest", progress=ctx.progress)
                at = angle_trajectory(course.residual, ctx.target, control="course",
                                      bonferroni="bonferroni_states", **kw)
            else:
                at = angle_trajectory(r, ctx.target, control=control,
                                      exclude_first=a["exclude_first"],
                                      bonferroni=a["bonferroni"], **kw)
                target_slots = at.target_slots
            out.tables[f"angles_{control}"] = at.to_frame()
            out.tables[f"angles_{control}_per_sentence"] = _per_sentence(at)
            protocols[control] = at.settings["protocol"]
        out.tables["protocol"] = pd.DataFrame(protocols).reset_index(names="choice")
        within = within_layer_angles(r, ctx.target, exclude_first=a["exclude_first"], seed=ctx.seed)
        out.tables["within_layer"] = within.to_frame()
        if r.final_state == "raw":
            out.tables["rotation_decomposition"] = rotation_decomposition(r, ctx.target).to_frame()
        n = min(a["show_prompts"], len(ctx.prompts))
        th = layer_angles(r)[:, :n]
        counts = np.isfinite(th).sum(0)
        mean = np.where(counts > 0, np.nansum(th, 0) / np.maximum(counts, 1), np.nan)
        out.view_data["token_mean_angle"] = _as_tensor(mean)
        out.view_data["mask"] = r.mask[:n]
        out.facts.update({
            "str_tokens": [clean.inputs.str_tokens[b] for b in range(n)],
            "target": ctx.target,
            "target_slots": np.asarray(target_slots).tolist() if target_slots is not None else None,
            "n_layers": r.n_layers,
            "n_sentences": len(ctx.prompts),
            "controls": a["controls"],
        })
        out.arrays["resid"] = r.resid
        out.arrays["mask"] = r.mask
        _which_heads(ctx, out)
        return out

    # ------------------------------------------------------------------------------ render
    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        f = out.facts
        report = new_report(
            manifest, self.title,
            f"Angle (degrees) between the vectors of {f['target']!r} at consecutive layers "
            f"(x_l-1 -> x_l, l = 1..{f['n_layers']}), the word just before it, and a random "
            f"control, over {f['n_sentences']} sentences. Paired t-test per layer (target vs "
            "before), with an exact or Monte Carlo sign-flip permutation test and a bootstrap CI "
            "over sentences beside it (no normality assumed). The course column is the course "
            "notebook's computation; the clean column is tlprobes' protocol; the table below names "
            "every choice behind each. Angles use the stable 2·atan2(|u^-v^|, |u^+v^|) in float64.",
        )
        self._protocol(report, out)
        for control in f["controls"]:
            self._column(report, out, control)
        if "course" in f["controls"] and len(f["controls"]) > 1:
            self._clean_changes(report)
        if "rotation_decomposition" in out.tables:
            self._decomposition(report, out)
        self._tokens(report, out)
        _render_which_heads(report, out)
        return report

    def _protocol(self, report: Any, out: StudyOutput) -> None:
        if "protocol" in out.tables:
            report.add_heading("Protocol")
            report.add_table(out.tables["protocol"], caption="the choices behind each column")

    def _column(self, report: Any, out: StudyOutput, control: str) -> None:
        from ...render import plot_layer_profiles

        names = {"course": "Course column: the notebook's computation",
                 "clean": "Clean column: layer-matched control, valid tokens only",
                 "layer_matched": "Layer-matched anisotropy baseline"}
        df = out.tables[f"angles_{control}"]
        report.add_heading(names.get(control, control))
        sig_stat, sig_name = (("reject_bonferroni", "Bonferroni, m = L+1") if control == "course"
                              else ("reject_fdr_bh", "FDR-BH q < .05"))
        layers, reject = series(df, "target-before", sig_stat)
        sig = reject > 0.5
        fig = plot_layer_profiles(
            {"target": curve(df, "target"), "non-target (word before)": curve(df, "before"),
             "control": curve(df, "control")},
            significant=sig, layers=list(layers),
            title=f"Rotation per layer, {control} column",
            sig_label=f"target ≠ before ({sig_name})",
        )
        report.add_figure(fig, caption=f"{int(sig.sum())} of {len(sig)} layers differ "
                                       f"({sig_name}).")
        report.add_table(pivot(df, [
            ("target", "mean"), ("before", "mean"), ("control", "mean"),
            ("target-before", "t"), ("target-before", "p_bonferroni"),
            ("target-before", "p_fdr_bh"), ("target-before", "d_z"),
            ("target-before", "perm_p"), ("target-before", "boot_ci_low"),
            ("target-before", "boot_ci_high"),
        ]), caption="per layer: mean angles, paired t (target - before) with adjusted p and d_z, "
                    "sign-flip permutation p, bootstrap 95% CI of the mean difference")

    def _clean_changes(self, report: Any) -> None:
        report.add_heading("What the clean column changes, and why")
        report.add_table(pd.DataFrame(CLEAN_CHANGES, columns=["choice", "course", "clean", "why"]),
                         caption="the clean column differs from the course's only in these points")

    def _decomposition(self, report: Any, out: StudyOutput) -> None:
        from ...render import plot_layer_profiles

        df = out.tables["rotation_decomposition"]
        report.add_heading("What turns the target: attention vs MLP")
        report.add_text(
            "Each block's step x_l - x_(l-1) is exactly attention out + MLP out. Only the part of "
            "the step orthogonal to x_(l-1) turns the vector; its length splits exactly into the "
            "attention push and the MLP push (their components along that direction), and the "
            "rotation is atan2(push, |x_(l-1)| + the parts along x_(l-1)). 'Attention alone' is "
            "the angle x_(l-1) -> resid_mid, 'MLP alone' resid_mid -> x_l (clean run, target "
            "token).")
        layers, _ = series(df, "total", "mean")
        fig = plot_layer_profiles(
            {"total": curve(df, "total"), "attention alone": curve(df, "attention alone"),
             "MLP alone": curve(df, "MLP alone")},
            layers=list(layers), title="Rotation of the target per block, by component")
        report.add_figure(fig, caption="mean over sentences, 95% CI")
        report.add_table(pivot(df, [
            ("total", "mean"), ("attention alone", "mean"), ("MLP alone", "mean"),
            ("attention push", "mean"), ("MLP push", "mean"),
            ("attention share of the push", "mean")]),
            caption="per block: rotation angles (deg) and the orthogonal push of each component")

    def _tokens(self, report: Any, out: StudyOutput) -> None:
        from ...render import token_view

        f = out.facts
        report.add_heading("Tokens coloured by mean rotation across layers")
        vals = out.view_data["token_mean_angle"]
        mask = out.view_data["mask"]
        for b, strs in enumerate(f["str_tokens"]):
            report.add_view(token_view(strs, vals[b].double().numpy(), mask=mask[b].numpy(),
                                       label=f"sentence {b}: mean angle (deg)"))


def _per_sentence(at: Any) -> pd.DataFrame:
    rows = []
    for cond, arr in at.angles.items():
        for layer_i, layer in enumerate(at.layers):
            for s in range(arr.shape[1]):
                rows.append((int(layer), s, cond, float(arr[layer_i, s])))
    return pd.DataFrame(rows, columns=["layer", "sentence", "condition", "angle_deg"])


def _as_tensor(x: np.ndarray) -> Any:
    import torch

    return torch.as_tensor(np.nan_to_num(x, nan=0.0)).float()


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
    out.tables["heads_contrast_angle"] = head_contrast(hs, "angle", correction="fdr_bh").table()
    out.tables["heads_ranking_angle"] = head_ranking(hs, "angle").table()
    out.tables["heads_ranking_dla"] = head_ranking(hs, "dla").table()
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
