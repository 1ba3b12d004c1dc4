"""Seed 004: the unembedding and the logit lens: what W_U reads at every layer, in the two variants
(the logit lens: the model's final norm on every state; the course's: W_U on HF's hidden states,
no norm before the last state, no BOS), plus weight tying and the unembedding's spectrum."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from .._study import StudyContext, StudyOutput
from ._common import new_report, pivot, series

__all__ = ["STUDY"]


class Lens:
    name = "lens"
    title = "Unembedding and logit lens"
    schema = {
        "top_k": (int, 5),
        "course_variant": (bool, True),
        "show_prompts": (int, 3),
    }

    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes._tl.adapter import adapter_for
        from tlprobes.analysis import lens_readout, unembedding_spectrum, weight_tying
        from tlprobes.analysis._lens import VARIANTS

        a = ctx.analysis
        res = tp.run(ctx.model, ctx.prompts, tp.LogitLens(top_k=a["top_k"]),
                     batch_size=ctx.batch_size, padding_side=ctx.padding_side,
                     progress=ctx.progress)
        out = StudyOutput()
        out.tables["lens"] = lens_readout(res.logit_lens).to_frame()
        protocol = {"variant": [VARIANTS[True]],
                    "BOS": ["as the model was trained (prepend_bos default)"],
                    "scored against": ["the next token of the prompt"],
                    "batches": [f"{ctx.batch_size} prompts, {ctx.padding_side} padding"]}
        if a["course_variant"]:
            # the course: GPT-2's tokenizer (no BOS), W_U on HF hidden_states (no norm before x_L)
            course = tp.run(ctx.model, ctx.prompts,
                            tp.LogitLens(top_k=a["top_k"], apply_ln=False, name="lens_no_ln"),
                            batch_size=ctx.batch_size, padding_side=ctx.padding_side,
                            prepend_bos=False, progress=ctx.progress)
            out.tables["lens_no_ln"] = lens_readout(course.lens_no_ln).to_frame()
            protocol["variant"].append(VARIANTS[False])
            protocol["BOS"].append("none (prepend_bos=False, as GPT-2's HF tokenizer encodes)")
            protocol["scored against"].append("the next token of the prompt")
            protocol["batches"].append(protocol["batches"][0])
        out.tables["protocol"] = pd.DataFrame(
            protocol, index=["logit lens", "course"][: len(protocol["BOS"])]
        ).T.reset_index(names="choice")
        adapter = adapter_for(ctx.model)
        W_U = adapter.unembed_weight.detach().double().cpu().numpy()
        W_E = adapter.embed_weight.detach().double().cpu().numpy()
        tying = weight_tying(W_U, W_E)
        out.tables["weight_tying"] = tying.to_frame()
        spec = unembedding_spectrum(W_U.T, center=True)
        out.tables["unembedding_spectrum"] = spec.to_frame()
        out.view_data["explained"] = torch.as_tensor(spec.explained).float()
        n = min(a["show_prompts"], len(ctx.prompts))
        lens = res.logit_lens
        decode = res.inputs.decode
        out.view_data["top_prob"] = lens.top_logprobs[:, :n, :, 0].exp().float()
        out.view_data["mask"] = res.inputs.attention_mask[:n]
        out.facts.update({
            "str_tokens": [res.inputs.str_tokens[b] for b in range(n)],
            "top_tokens": [[decode(lens.top_ids[i, b, :, 0].tolist()) if decode else
                            [str(t) for t in lens.top_ids[i, b, :, 0].tolist()]
                            for i in range(lens.top_ids.shape[0])] for b in range(n)],
            "n_layers": adapter.n_layers,
            "tied": bool(tying.tied),
            "effective_rank": float(spec.effective_rank),
            "n_prompts": len(ctx.prompts),
        })
        return out

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import logit_lens_table, plot_layer_profiles, plot_scree

        f = out.facts
        report = new_report(
            manifest, self.title,
            "Two variants, scored against the next token of each of "
            f"{f['n_prompts']} prompts. The logit lens: each residual state x_0..x_L goes through "
            "the model's own final LayerNorm (fresh statistics) and W_U. The course's variant "
            "(lecture 222): W_U applied to Hugging Face's hidden_states, i.e. x_0..x_(L-1) with no "
            "norm and x_L after ln_f (HF's last hidden state already is), on prompts tokenised "
            "without BOS as GPT-2's tokenizer does. At x_L each variant's read-out is exactly the "
            "model's own prediction for its input, so the gap there is the BOS's alone; before x_L "
            "the missing norm adds to it.",
        )
        if "protocol" in out.tables:
            report.add_table(out.tables["protocol"], caption="protocol of each variant")
        df = out.tables["lens"]
        layers, _ = series(df, "target_logprob", "mean")
        curves = {}
        for name, table in (("logit lens (ln_f on every state)", df),
                            ("course (no norm before x_L, no BOS)", out.tables.get("lens_no_ln"))):
            if table is None:
                continue
            curves[name] = tuple(series(table, "target_logprob", s)[1] for s in ("mean", "ci_low", "ci_high"))
        report.add_heading("Log-prob of the next token per layer")
        report.add_figure(plot_layer_profiles(curves, layers=[f"x{int(v)}" for v in layers],
                                                  ylabel="log p(next token)", xlabel="state",
                                                  title="Logit lens: next-token log-prob"))
        report.add_table(pivot(df, [("target_logprob", "mean"), ("target_rank", "median"),
                                    ("target_is_top1", "mean"), ("entropy", "mean"),
                                    ("kl_to_final", "mean")]),
                         caption="per state: next-token log-prob, median rank, top-1 accuracy, "
                                 "entropy (nats), KL(final || state)")
        report.add_heading("Top token per layer and position")
        for b, strs in enumerate(f["str_tokens"]):
            report.add_view(logit_lens_table(
                f["top_tokens"][b], out.view_data["top_prob"][:, b].double().numpy(),
                row_labels=[f"x{i}" for i in range(len(f["top_tokens"][b]))], col_labels=strs,
                mask=out.view_data["mask"][b].numpy(), title=f"prompt {b}"))
        report.add_heading("The unembedding matrix")
        report.add_text(f"W_U tied to W_E^T: {f['tied']}. Effective rank of the centred W_U: "
                        f"{f['effective_rank']:.1f}.")
        spec = out.tables["unembedding_spectrum"]
        report.add_table(out.tables["weight_tying"].round(6), caption="W_U vs W_E^T")
        summary = spec[spec["statistic"].isin(["effective_rank", "participation_ratio", "k95"])]
        report.add_table(summary.round(4), caption="spectrum summary")
        report.add_figure(plot_scree(out.view_data["explained"].double().numpy(), n=30,
                                     title="Singular value spectrum of W_U (share of variance)"))
        return report


STUDY = Lens()
