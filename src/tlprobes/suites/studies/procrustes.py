"""Seed 002: translating between embedding spaces, for any two models whatever their tokenizers.

Three parts, each run on its own so one failing leaves the others' results in the run directory:

1. *alignment*: the words both tokenizers spell (decoded strings, the same leading-space
   convention; multi-piece words pooled by a declared rule), with counts of what was dropped;
2. *embeddings*: an orthogonal Procrustes map between the two embedding matrices over those
   words, scored on held-out words by precision@1 (nearest neighbour, CSLS, inverted softmax,
   computed blockwise) against the identity map and a shuffled dictionary;
3. *layers*: both models read the same sentences, each word's residual state is pooled the same
   way, and layers are paired by relative depth for Procrustes, RSA and CKA, plus the full
   layer x layer CKA matrix.

The run fails only when no part could be computed; the report says what was skipped and why.
"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..._tl.adapter import adapter_for, model_name
from .._schema import SuiteError
from .._study import StudyContext, StudyOutput
from ._common import new_report

__all__ = ["STUDY"]


def _brief(err: BaseException) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" (at {last[0].name}, {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}"


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
        "pooling": (str, "single"),
        "state_pooling": (str, "last"),
        "search": (str, "all"),
        "max_words": (int, 20000),
        "max_queries": (int, 2000),
    }

    # ----------------------------------------------------------------------------- compute
    def compute(self, ctx: StudyContext) -> StudyOutput:
        if ctx.second_model is None:
            raise SuiteError("the procrustes study needs two models: set [model] second = \"...\"")
        a = ctx.analysis
        from tlprobes.analysis._align import POOLING

        for key in ("pooling", "state_pooling"):
            if a[key] not in POOLING:
                raise SuiteError(f"[analysis] {key} = {a[key]!r}; choose one of {', '.join(map(repr, POOLING))}")
        if a["search"] not in ("test", "all"):
            raise SuiteError(f"[analysis] search = {a['search']!r}; choose one of 'test', 'all'")
        A, B = ctx.model, ctx.second_model
        out = StudyOutput()
        f = out.facts
        f.update({"model_a": model_name(A, "A"), "model_b": model_name(B, "B"), "done": [], "skipped": []})
        opts = dict(kind=a["kind"], center=a["center"], normalize=a["normalize"],
                    test_fraction=a["test_fraction"], csls_k=a["csls_k"], isf_beta=a["isf_beta"],
                    search=a["search"], max_queries=a["max_queries"] or None, seed=ctx.seed)
        al = None
        for part, fn in (("alignment", lambda: self._alignment(ctx, out)),
                         ("embeddings", lambda: self._embeddings(ctx, out, al, opts)),
                         ("layers", lambda: self._layers(ctx, out, opts))):
            if part == "embeddings" and al is None:
                f["skipped"].append({"part": part, "why": "no shared words: the word alignment was skipped"})
                continue
            try:
                res = fn()
            except SuiteError:
                raise
            except Exception as err:  # noqa: BLE001 - one part failing must not lose the others
                f["skipped"].append({"part": part, "why": _brief(err)})
                if ctx.progress:
                    print(f"tlprobes: procrustes: {part} skipped: {_brief(err)}", flush=True)
                continue
            if part == "alignment":
                al = res
            f["done"].append(part)
        if not f["done"]:
            raise SuiteError("the procrustes study computed nothing: " + "; ".join(
                f"{s['part']}: {s['why']}" for s in f["skipped"]))
        return out

    def _alignment(self, ctx: StudyContext, out: StudyOutput) -> Any:
        from tlprobes.analysis._align import align_words

        a, f = ctx.analysis, out.facts
        ada, adb = adapter_for(ctx.model), adapter_for(ctx.second_model)
        al = align_words(ada.hf_tokenizer, adb.hf_tokenizer, pooling=a["pooling"], names=("A", "B"))
        if len(al) < 10:
            raise ValueError(f"only {len(al)} shared words ({al.summary()}); too few to fit a map")
        the = al.words.index("the") if "the" in al.words else 0
        f["alignment"] = {
            "summary": al.summary(), "n_shared": len(al), "n_candidates": al.n_candidates,
            "n_pooled": al.n_multi_piece, "pooling": al.pooling, "dropped": al.dropped,
            "tokenizer_a": ada.tokenizer_facts(al.pieces_a[the]),
            "tokenizer_b": adb.tokenizer_facts(al.pieces_b[the]),
            "example_word": al.words[the],
        }
        out.tables["alignment"] = al.table()
        return al

    def _embeddings(self, ctx: StudyContext, out: StudyOutput, al: Any, opts: dict[str, Any]) -> None:
        from tlprobes.analysis import map_embeddings, pca

        a, f = ctx.analysis, out.facts
        words = list(al.words)
        keep = np.arange(len(words))
        if a["max_words"] and len(words) > a["max_words"]:
            keep = np.sort(np.random.default_rng(ctx.seed).choice(len(words), a["max_words"], replace=False))
            f["alignment"]["subsampled_to"] = int(a["max_words"])
        # only the shared words' rows are copied (float64); the full W_E stays as the model holds it
        with torch.no_grad():
            EA = al.rows(adapter_for(ctx.model).embed_weight.detach(), "a")[keep]
            EB = al.rows(adapter_for(ctx.second_model).embed_weight.detach(), "b")[keep]
        words = [words[i] for i in keep]
        emb = map_embeddings(EA, EB, **opts)
        out.tables["embeddings"] = emb.to_frame()
        f["scores"] = emb.scores
        f["n_pairs"] = int(emb.settings["n_pairs"])
        # a picture: held-out words in B's top-2 PCA plane, before and after the map; prefer words of
        # the prompts (rare strings are outliers)
        test = np.asarray(emb.test_rows)
        in_prompts = {w for p in ctx.prompts for w in p.replace(".", " ").split()}
        sel = [j for j in test if words[j] in in_prompts] or list(test)
        sel = np.asarray(sel[: a["plot_words"]])
        src, tgt = EA[sel], emb.procrustes._prep_x(EB[sel])
        aligned = emb.procrustes.transform(src)
        basis = pca(np.concatenate([tgt, aligned]), 2)
        out.view_data["source"] = torch.as_tensor(pca(src, 2).projections).float()
        out.view_data["target"] = torch.as_tensor(basis.transform(tgt)).float()
        out.view_data["aligned"] = torch.as_tensor(basis.transform(aligned)).float()
        f["words"] = [words[j] for j in sel]

    def _layers(self, ctx: StudyContext, out: StudyOutput, opts: dict[str, Any]) -> None:
        from tlprobes.analysis import cka, map_embeddings, rsa
        from tlprobes.analysis._align import common_occurrences, depth_pairing, word_states

        a, f = ctx.analysis, out.facts
        kw = dict(pooling=a["state_pooling"], batch_size=ctx.batch_size, progress=ctx.progress)
        sa, sb = word_states(ctx.model, ctx.prompts, **kw), word_states(ctx.second_model, ctx.prompts, **kw)
        ia, ib = common_occurrences(sa, sb)
        if ia.size < 10:
            raise ValueError(f"only {ia.size} word occurrences are read by both models; need 10")
        XA, XB = sa.states[:, ia], sb.states[:, ib]
        la, lb = XA.shape[0] - 1, XB.shape[0] - 1
        pairs = depth_pairing(la, lb)
        f["layers"] = {"n_words": int(ia.size), "pairing": pairs, "pooling": a["state_pooling"],
                       "states_a": la + 1, "states_b": lb + 1,
                       "skipped_a": sa.skipped, "skipped_b": sb.skipped,
                       "distinct_words": len({k[2] for k in (sa.keys[i] for i in ia)})}
        rng = np.random.default_rng(ctx.seed)
        sub = rng.choice(ia.size, size=min(ia.size, a["rsa_items"]), replace=False)
        rows = []
        for i, j in pairs:
            X, Y = XA[i], XB[j]
            m = map_embeddings(X, Y, **opts)
            rs = rsa(X[sub], Y[sub], n_perm=a["n_perm"], seed=ctx.seed)
            for group in ("test", "identity", "shuffled"):
                for k, v in m.scores.get(group, {}).items():
                    rows.append({"layer": i, "layer_b": j, "group": "map" if group == "test" else group,
                                 "statistic": k, "value": float(v)})
            rows += [{"layer": i, "layer_b": j, "group": "rsa", "statistic": "r", "value": rs.r},
                     {"layer": i, "layer_b": j, "group": "rsa", "statistic": "p", "value": rs.p},
                     {"layer": i, "layer_b": j, "group": "cka", "statistic": "linear", "value": cka(X, Y)}]
        out.tables["layers"] = pd.DataFrame(rows)
        mat = np.array([[cka(XA[i], XB[j]) for j in range(lb + 1)] for i in range(la + 1)])
        out.tables["cka_matrix"] = pd.DataFrame(
            [{"layer": i, "layer_b": j, "value": float(mat[i, j])} for i in range(la + 1) for j in range(lb + 1)])

    # ------------------------------------------------------------------------------ render
    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any:
        from ...render import plot_cosine_heatmap, plot_layer_profiles, plot_procrustes

        f = out.facts
        a = manifest["suite"]["analysis"]
        al = f.get("alignment")
        report = new_report(
            manifest, self.title,
            f"An {a.get('kind', 'orthogonal')} Procrustes map R (min |X R - Y|, R^T R = I) from model A "
            f"({f.get('model_a')}) to model B ({f.get('model_b')}). The two models need not share a "
            "tokenizer: they are compared on the words both tokenizers spell (matched as decoded strings), "
            "and layer by layer on the same words of the same sentences. A map is fitted on "
            f"{1 - a.get('test_fraction', 0.2):.0%} of the pairs and scored on the held-out rest by precision@1: "
            "is the mapped vector's best match (cosine, CSLS or inverted softmax) the same word in model B? "
            "The identity map (equal widths only) and a shuffled dictionary are the baselines.",
        )
        skipped = f.get("skipped", [])
        if skipped:
            report.add_heading("Skipped parts")
            report.add_text("Not every part of this study could run; everything else below was computed.")
            report.add_table(pd.DataFrame(skipped), caption="what was skipped, and why")

        report.add_heading("What was aligned")
        if al:
            ta, tb = al["tokenizer_a"], al["tokenizer_b"]
            report.add_table(pd.DataFrame([
                {"model": "A", "name": f.get("model_a"), **ta},
                {"model": "B", "name": f.get("model_b"), **tb}]),
                caption=f"tokenizers; how each spells the word {al.get('example_word')!r} inside running text")
            rule = {"single": "only words that are one token on both sides",
                    "last": "words split into several pieces represented by their last piece",
                    "first": "words split into several pieces represented by their first piece",
                    "mean": "words split into several pieces represented by the mean of their pieces"}
            report.add_text(
                f"Shared words: {al['summary']} Candidates are the letter-only strings any single token of "
                "either tokenizer decodes to; each is encoded as it appears after a space inside running "
                f"text, so both sides use the same leading-space convention. Pooling: {rule.get(al['pooling'], al['pooling'])}."
                + (f" {al['subsampled_to']} of them (seeded) were used for the map." if al.get("subsampled_to") else ""))
            if "alignment" in out.tables:
                report.add_table(out.tables["alignment"], caption="candidate, shared and dropped words")
        else:
            report.add_text("No word alignment (see Skipped parts).")
        lay = f.get("layers")
        if lay:
            report.add_text(
                f"Layer by layer: both models read the same {manifest['suite'].get('n_prompts', '')} prompts; "
                f"{lay['n_words']} word occurrences ({lay['distinct_words']} distinct words, runs of letters located "
                f"by character offsets) are read by both; each word's state is its {lay['pooling']} token's "
                f"residual state. A has {lay['states_a']} states, B {lay['states_b']} (state 0 = embeddings); "
                "each state i of A is paired with state j = round(i x L_B / L_A) of B (same relative depth): "
                + ", ".join(f"{i}→{j}" for i, j in lay["pairing"]) + "."
                + (f" Left out in A: {lay['skipped_a']}." if lay["skipped_a"] else "")
                + (f" Left out in B: {lay['skipped_b']}." if lay["skipped_b"] else ""))

        if "embeddings" in out.tables and f.get("scores"):
            report.add_heading("Token embeddings")
            s = f["scores"]
            table = pd.DataFrame([{"split": k, **{m: round(float(v), 4) for m, v in d.items()}}
                                  for k, d in s.items()])
            where = ("all shared words of B (train and test)" if a.get("search", "all") == "all"
                     else "the held-out words of B")
            report.add_table(table, caption=f"precision@1 (NN, CSLS, inverted softmax) retrieving among {where}, "
                                            "mean cosine and residual per split")
            if "source" in out.view_data:
                report.add_figure(plot_procrustes(
                    out.view_data["source"].double().numpy(), out.view_data["target"].double().numpy(),
                    out.view_data["aligned"].double().numpy(), labels=f.get("words"),
                    names=("model A", "model B")), caption="held-out words: A's own PCA plane (left); "
                                                             "B's plane with A mapped into it (right)")

        if "layers" in out.tables:
            report.add_heading("Residual states, layer by layer")
            df = out.tables["layers"]

            def line(group: str, stat: str) -> tuple[Any, Any]:
                sel = df[(df["group"] == group) & (df["statistic"] == stat)].sort_values("layer")
                return sel["layer"].tolist(), sel["value"].to_numpy(float)

            layers, nn = line("map", "p_at_k_nn")
            nan = np.full_like(nn, np.nan)
            curves = {"P@1 NN (mapped)": (nn, nan, nan),
                      "P@1 CSLS (mapped)": (line("map", "p_at_k_csls")[1], nan, nan),
                      "P@1 ISF (mapped)": (line("map", "p_at_k_isf")[1], nan, nan),
                      "RSA r (Spearman)": (line("rsa", "r")[1], nan, nan),
                      "linear CKA": (line("cka", "linear")[1], nan, nan)}
            ident = line("identity", "p_at_k_nn")[1]
            if ident.size == nn.size:
                curves["P@1 NN (identity)"] = (ident, nan, nan)
            pair = dict(zip(df["layer"], df["layer_b"]))
            report.add_figure(plot_layer_profiles(
                curves, layers=[f"A{v}/B{pair[v]}" for v in layers], xlabel="state of A / paired state of B",
                ylabel="score", title="Model A -> model B, states paired by relative depth"))
            wide = df.pivot_table(index=["layer", "layer_b"], columns=["group", "statistic"], values="value")
            wide.columns = [f"{g} {s}" for g, s in wide.columns]
            report.add_table(wide.reset_index().round(4),
                             caption="per paired state (layer = A's state, layer_b = B's): mapping scores, RSA, CKA")
        if "cka_matrix" in out.tables:
            cm = out.tables["cka_matrix"]
            mat = cm.pivot(index="layer", columns="layer_b", values="value")
            report.add_figure(plot_cosine_heatmap(
                mat.to_numpy(float), row_labels=[f"A{i}" for i in mat.index],
                col_labels=[f"B{j}" for j in mat.columns], vmin=0.0, vmax=1.0, cmap="viridis",
                xlabel="state of model B", ylabel="state of model A", colorbar_label="linear CKA",
                title="Linear CKA, every state of A against every state of B"),
                caption="the full layer x layer CKA matrix over the shared word occurrences")
        return report


STUDY = ProcrustesStudy()
