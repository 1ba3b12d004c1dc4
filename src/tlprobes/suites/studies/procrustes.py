"""Seed 002: translating between embedding spaces. An orthogonal Procrustes map between two models'
token embeddings over their shared vocabulary, and between their residual states layer by layer,
scored by precision@1 (nearest neighbour and CSLS) on held-out tokens, with RSA and CKA."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .._schema import SuiteError
from .._study import StudyContext, StudyOutput
from ._common import new_report

__all__ = ["STUDY"]


def _vocab(model: Any) -> dict[str, int] | None:
    tok = getattr(model, "tokenizer", None)
    return dict(tok.get_vocab()) if tok is not None else None


class ProcrustesStudy:
    name = "procrustes"
    title = "Translating between embedding spaces (Procrustes)"
    schema = {
        "kind": (str, "orthogonal"),
        "center": (bool, True),
        "normalize": (bool, True),
        "test_fraction": (float, 0.2),
        "csls_k": (int, 10),
        "isf_beta": (float, 30.0),
        "rsa_items": (int, 300),
        "n_perm": (int, 200),
        "plot_words": (int, 40),
    }

    def compute(self, ctx: StudyContext) -> StudyOutput:
        import tlprobes as tp
        from tlprobes.analysis import cka, map_embeddings, pca, rsa, shared_vocabulary

        if ctx.second_model is None:
            raise SuiteError("the procrustes study needs two models: set [model] second = \"...\"")
        a = ctx.analysis
        A, B = ctx.model, ctx.second_model
        opts = dict(kind=a["kind"], center=a["center"], normalize=a["normalize"],
                    test_fraction=a["test_fraction"], csls_k=a["csls_k"], isf_beta=a["isf_beta"],
                    seed=ctx.seed)
        EA = A.W_E.detach().double().cpu().numpy()
        EB = B.W_E.detach().double().cpu().numpy()
        emb = map_embeddings(EA, EB, _vocab(A), _vocab(B), **opts)
        out = StudyOutput()
        out.tables["embeddings"] = emb.to_frame()
        # the same prompts through both models: states at every layer, paired by token
        ra = tp.run(A, ctx.prompts, tp.Residual(), batch_size=ctx.batch_size, progress=ctx.progress)
        rb = tp.run(B, ctx.prompts, tp.Residual(), batch_size=ctx.batch_size, progress=ctx.progress)
        if not torch.equal(ra.inputs.tokens, rb.inputs.tokens):
            raise SuiteError("layer-wise mapping needs both models to share a tokenizer; "
                             "the embedding mapping above does not")
        valid = ra.residual.mask.clone()
        valid[:, 0] = False  # the first token is an outlier in every model
        rng = np.random.default_rng(ctx.seed)
        rows = []
        n_states = ra.residual.resid.shape[0]
        for layer in range(n_states):
            X = ra.residual.resid[layer][valid].double().numpy()
            Y = rb.residual.resid[layer][valid].double().numpy()
            m = map_embeddings(X, Y, **opts)
            sub = rng.choice(len(X), size=min(len(X), a["rsa_items"]), replace=False)
            rs = rsa(X[sub], Y[sub], n_perm=a["n_perm"], seed=ctx.seed)
            rows += [
                {"layer": layer, "group": "map", "statistic": k, "value": float(v)}
                for k, v in m.scores["test"].items()
            ]
            rows += [
                {"layer": layer, "group": "identity", "statistic": k, "value": float(v)}
                for k, v in m.scores["identity"].items()
            ]
            rows += [{"layer": layer, "group": "rsa", "statistic": "r", "value": rs.r},
                     {"layer": layer, "group": "rsa", "statistic": "p", "value": rs.p},
                     {"layer": layer, "group": "cka", "statistic": "linear", "value": cka(X, Y)}]
        out.tables["layers"] = pd.DataFrame(rows)
        # a picture: held-out words in model B's top-2 PCA plane, before and after the map
        test = np.asarray(emb.test_rows)
        va, vb = _vocab(A), _vocab(B)
        if va is not None and vb is not None:
            tokens, ia, ib = shared_vocabulary(va, vb)
            # plot held-out tokens that are words of the prompts (rare byte tokens are outliers)
            tok = A.tokenizer
            words_all = [tok.convert_tokens_to_string([tokens[i]]) for i in test]
            in_prompts = {w for p in ctx.prompts for w in p.replace(".", " ").split()}
            keep = [j for j, w in enumerate(words_all) if w.strip() in in_prompts] or list(range(len(test)))
            test = test[keep][: a["plot_words"]]
            words = [words_all[j] for j in keep][: a["plot_words"]]
        else:
            ia = ib = np.arange(len(EA))
            test = test[: a["plot_words"]]
            words = [str(i) for i in test]
        src, tgt = EA[ia[test]], emb.procrustes._prep_x(EB[ib[test]])
        aligned = emb.procrustes.transform(src)
        basis = pca(np.concatenate([tgt, aligned]), 2)
        own = pca(src, 2)
        out.view_data["source"] = torch.as_tensor(own.projections).float()
        out.view_data["target"] = torch.as_tensor(basis.transform(tgt)).float()
        out.view_data["aligned"] = torch.as_tensor(basis.transform(aligned)).float()
        out.facts.update({
            "words": words, "n_shared": int(emb.settings["n_pairs"]),
            "model_a": str(getattr(A.cfg, "model_name", "A")),
            "model_b": str(getattr(B.cfg, "model_name", "B")),
            "scores": emb.scores,
        })
        return out

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import plot_angle_trajectories, plot_procrustes

        f = out.facts
        a = manifest["suite"]["analysis"]
        report = new_report(
            manifest, self.title,
            f"An {a['kind']} Procrustes map R (min |X R - Y|, R^T R = I) from model A "
            f"({f['model_a']}) to model B ({f['model_b']}), fitted on {1 - a['test_fraction']:.0%} of "
            f"their {f['n_shared']} shared tokens and scored on the held-out rest by precision@1: is "
            "the mapped vector's nearest neighbour (cosine, CSLS or inverted softmax) the same token in "
            "model B? The "
            "identity map and a shuffled dictionary are the baselines.",
        )
        report.add_heading("Token embeddings")
        s = f["scores"]
        table = pd.DataFrame([{"split": k, **{m: round(float(v), 4) for m, v in d.items()}}
                              for k, d in s.items()])
        report.add_table(table, caption="precision@1 (NN, CSLS, inverted softmax), mean cosine and residual per split")
        report.add_figure(plot_procrustes(
            out.view_data["source"].double().numpy(), out.view_data["target"].double().numpy(),
            out.view_data["aligned"].double().numpy(), labels=f["words"],
            names=("model A", "model B")), caption="held-out tokens: A's own PCA plane (left); "
                                                     "B's plane with A mapped into it (right)")
        report.add_heading("Residual states, layer by layer")
        df = out.tables["layers"]

        def line(group: str, stat: str) -> tuple[Any, Any]:
            sel = df[(df["group"] == group) & (df["statistic"] == stat)].sort_values("layer")
            return sel["layer"].tolist(), sel["value"].to_numpy(float)

        layers, nn = line("map", "p_at_k_nn")
        nan = np.full_like(nn, np.nan)
        curves = {"P@1 NN (mapped)": (nn, nan, nan), "P@1 CSLS (mapped)": (line("map", "p_at_k_csls")[1], nan, nan),
                  "P@1 ISF (mapped)": (line("map", "p_at_k_isf")[1], nan, nan),
                  "P@1 NN (identity)": (line("identity", "p_at_k_nn")[1], nan, nan),
                  "RSA r (Spearman)": (line("rsa", "r")[1], nan, nan),
                  "linear CKA": (line("cka", "linear")[1], nan, nan)}
        report.add_figure(plot_angle_trajectories(curves, layers=[f"x{v}" for v in layers],
                                                  xlabel="state", ylabel="score",
                                                  title="Model A -> model B, per state"))
        wide = df.pivot_table(index="layer", columns=["group", "statistic"], values="value")
        wide.columns = [f"{g} {s}" for g, s in wide.columns]
        report.add_table(wide.reset_index().round(4), caption="per state: mapping scores, RSA, CKA")
        return report


STUDY = ProcrustesStudy()
