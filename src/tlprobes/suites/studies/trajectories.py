"""Lectures 230-233: state-space trajectories of nouns vs adjectives (gold part-of-speech labels):
one PCA basis fitted on every (token, layer) vector, each token's path projected into it, and the
per-layer step lengths of the two groups compared (Welch t and Mann-Whitney, FDR-BH)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..._errors import PositionError
from .._schema import SuiteError
from .._study import StudyContext, StudyOutput
from ._common import new_report

__all__ = ["STUDY"]


def _target_slots(model: Any, tokens: torch.Tensor, mask: torch.Tensor, words: list[str]) -> np.ndarray:
    """Last sub-token position of each prompt's target word (its first occurrence), resolved like
    ``tp.Target(word)`` through :func:`tlprobes.capture._positions.target_indices`."""
    from tlprobes._adapter import adapter_for
    from tlprobes.capture._positions import Target, target_indices

    adapter = adapter_for(model)
    slots = np.full(len(words), -1)
    for b, word in enumerate(words):
        ids = tokens[b].tolist()
        valid = mask[b].nonzero().flatten().tolist()
        seq = [ids[i] for i in valid]
        for variant in (" " + word, word, " " + word.capitalize(), word.capitalize()):
            try:
                (picked,) = target_indices(seq, adapter.encode_word(variant), Target(variant))
            except PositionError:
                continue
            slots[b] = valid[picked[0]]
            break
        if slots[b] < 0:
            raise SuiteError(f"target word {word!r} not found in the tokens of prompt {b}")
    return slots


class Trajectories:
    name = "trajectories"
    title = "Nouns vs adjectives: state-space trajectories"
    schema = {
        "word_column": (str, "word"),
        "group_column": (str, "pos"),
        "groups": ([str], ["NOUN", "ADJ"]),
        "n_components": (int, 2),
    }

    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes.analysis import independent_test, path_length, state_space_trajectories

        a = ctx.analysis
        for col in (a["word_column"], a["group_column"]):
            if col not in ctx.columns:
                raise SuiteError(f"the prompt file has no column {col!r}; columns: {list(ctx.columns)}")
        keep = [i for i, g in enumerate(ctx.columns[a["group_column"]]) if g in a["groups"]]
        prompts = [ctx.prompts[i] for i in keep]
        words = [ctx.columns[a["word_column"]][i] for i in keep]
        labels = [ctx.columns[a["group_column"]][i] for i in keep]
        res = tp.run(ctx.model, prompts, tp.Residual(), batch_size=ctx.batch_size,
                     padding_side=ctx.padding_side, progress=ctx.progress)
        r = res.residual
        slots = _target_slots(ctx.model, res.inputs.tokens, res.inputs.attention_mask, words)
        ss = state_space_trajectories(r, slots, groups=labels, n_components=a["n_components"])
        out = StudyOutput()
        out.tables["state_space"] = ss.to_frame()
        # full-dimensional step lengths of the target token, compared between groups per layer
        pl = path_length(r, exclude_first=False)
        steps = pl.steps[:, np.arange(len(slots)), slots]  # [L, items]
        groups = np.asarray(labels)
        g0, g1 = a["groups"][:2]
        test = independent_test(steps[:, groups == g0], steps[:, groups == g1])
        out.tables["step_test"] = test.to_frame(group=f"{g0}-{g1}", layers=pl.layers)
        rows = []
        for g in (g0, g1):
            vals = steps[:, groups == g]
            for i, layer in enumerate(pl.layers):
                rows.append({"layer": int(layer), "group": g, "statistic": "mean_step",
                             "value": float(np.nanmean(vals[i]))})
            tot = pl.total[np.arange(len(slots)), slots][groups == g]
            rows.append({"layer": -1, "group": g, "statistic": "mean_total_path",
                         "value": float(np.nanmean(tot))})
        out.tables["steps_by_group"] = pd.DataFrame(rows)
        out.view_data["group_means"] = torch.as_tensor(
            np.asarray(ss.group_means)).float()
        # the scree of the same (word, layer) rows the common basis was fitted on, 20 components
        from tlprobes.analysis import pca

        rows = r.resid[:, np.arange(len(slots)), slots].flatten(0, 1).double().numpy()
        scree = pca(rows, min(20, *rows.shape))
        out.view_data["explained"] = torch.as_tensor(scree.explained_variance_ratio).float()
        out.facts.update({"groups": list(ss.groups), "n_items": len(prompts),
                          "n_layers": r.n_layers,
                          "counts": {g: int((groups == g).sum()) for g in ss.groups}})
        out.captures.update({"resid": r.resid, "mask": r.mask, "slots": torch.as_tensor(slots)})
        return out

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import plot_angle_trajectories, plot_scree, plot_trajectories

        f = out.facts
        report = new_report(
            manifest, self.title,
            f"{f['n_items']} target words with gold part-of-speech labels "
            f"({', '.join(f'{g}: {n}' for g, n in f['counts'].items())}). One PCA basis is fitted on all "
            "(word, layer) vectors, and each group's mean path through the layers is drawn in it. "
            "Step lengths are compared per layer in the full space.",
        )
        report.add_heading("Mean trajectories in one PCA basis")
        report.add_figure(plot_trajectories(out.view_data["group_means"].double().numpy(),
                                            group_labels=f["groups"],
                                            layer_labels=[f"x{i}" for i in range(f["n_layers"] + 1)]))
        report.add_figure(plot_scree(out.view_data["explained"].double().numpy(),
                                     title="Explained variance of the common basis"))
        report.add_heading("Step length per layer by group")
        df = out.tables["steps_by_group"]
        curves = {}
        for g in f["groups"]:
            sel = df[(df["group"] == g) & (df["statistic"] == "mean_step")].sort_values("layer")
            v = sel["value"].to_numpy(float)
            curves[g] = (v, np.full_like(v, np.nan), np.full_like(v, np.nan))
            layers = sel["layer"].tolist()
        test = out.tables["step_test"]
        grp = test["group"].iloc[0]
        sig = test[(test["statistic"] == "p_fdr_bh")].sort_values("layer")["value"].to_numpy() < 0.05
        report.add_figure(plot_angle_trajectories(curves, significant=sig, layers=layers,
                                                  ylabel="|x_l - x_(l-1)|",
                                                  title="Step length of the target word",
                                                  sig_label="Welch FDR-BH q < .05"))
        wide = test.pivot_table(index="layer", columns="statistic", values="value").reset_index()
        report.add_table(wide.round(4), caption=f"per layer, {grp}: Welch t, Mann-Whitney U, FDR-BH")
        return report


STUDY = Trajectories()
