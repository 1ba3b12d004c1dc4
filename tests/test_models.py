"""The shipped default models, their corpus and the one-call loader (runs on TL 2, 3 and 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tlprobes as tp
import tlprobes.models as tm
import tlprobes.models.training.corpus as tc
from tlprobes._errors import ModelError, TLProbesError
from tlprobes._tl.loading import tl_major_version

TL_MAJOR = tl_major_version()
KINDS = {2: ["hooked"], 3: ["hooked", "bridge"]}.get(TL_MAJOR, ["bridge"])
SHIPPED = ["default", "default-s1"]
PROMPTS = Path(__file__).resolve().parents[1] / "probes" / "prompts"
TEXTS = [
    "Mary saw her dog in the park.",
    "John gave her a book because she was happy. Mary saw her dog in the park.",
]


@pytest.fixture(scope="module")
def hf_models():
    from transformers import GPT2LMHeadModel

    return {
        name: GPT2LMHeadModel.from_pretrained(
            tm.model_dir(name), attn_implementation="eager"
        ).eval()
        for name in SHIPPED
    }


def _tokens(model) -> torch.Tensor:
    rows = [model.to_tokens(t)[0] for t in TEXTS]
    width = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_zeros(width - len(r))]) for r in rows])  # right pad


# --------------------------------------------------------------------------------------------
# loading and numerical agreement with Hugging Face
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", SHIPPED)
def test_logits_match_hf(name, kind, hf_models):
    model = tm.load_model(name, kind=kind)
    assert model.cfg.n_layers == 4 and model.cfg.d_model == 128
    toks = _tokens(model)
    assert toks[0, 0].item() == 0  # BOS = <|endoftext|> is prepended
    with torch.no_grad():
        ours = model(toks)
        ref = hf_models[name](toks).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_compat_mode_keeps_log_probs(kind, hf_models):
    model = tm.load_model("default", kind=kind, compat=True)
    toks = _tokens(model)
    with torch.no_grad():
        ours = model(toks).log_softmax(-1)
        ref = hf_models["default"](toks).logits.log_softmax(-1)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_local_directory_loads_like_the_name(hf_models):
    model = tm.load_model(str(tm.model_dir("default-s1")))
    toks = _tokens(model)
    with torch.no_grad():
        torch.testing.assert_close(
            model(toks), hf_models["default-s1"](toks).logits, atol=1e-4, rtol=0
        )


def test_default_s0_is_an_alias():
    assert tm.model_dir("default") == tm.model_dir("default-s0")


def test_models_differ_but_share_the_tokenizer(hf_models):
    d0, d1 = tm.model_dir("default"), tm.model_dir("default-s1")
    assert (d0 / "tokenizer.json").read_bytes() == (d1 / "tokenizer.json").read_bytes()
    w0 = hf_models["default"].transformer.wte.weight
    w1 = hf_models["default-s1"].transformer.wte.weight
    assert w0.shape == w1.shape and not torch.allclose(w0, w1)


# --------------------------------------------------------------------------------------------
# tokenizer, card, shipped files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_her_is_one_token(name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tm.model_dir(name))
    ids = tok(" her", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    assert tok.convert_ids_to_tokens(ids) == ["Ġher"]
    card = json.loads((tm.model_dir(name) / "card.json").read_text())
    assert card["her_token_ids"] == ids


@pytest.mark.parametrize("name", SHIPPED)
def test_card_beats_unigram_baseline(name):
    card = json.loads((tm.model_dir(name) / "card.json").read_text())
    assert card["heldout_loss"] < card["unigram_loss"] - 1.0
    assert card["train_loss_eval"] < card["unigram_loss"]
    scores = card["head_scores"]
    assert len(scores["prev_token"]) == card["n_layer"] == 4
    assert all(len(row) == card["n_head"] for row in scores["induction"])
    assert card["seed"] == (1 if name == "default-s1" else 0)


def _induction_check(model, *, period=16, n=24, seed=5):
    """Induction scores and copy losses measured through tlprobes on fresh random blocks:
    [BOS] + R + R with R drawn from the tokens of the general prompt set (a different pool,
    seed and length from the card's own evaluation, and TL rather than HF computing the
    pattern)."""
    import tlprobes as tp

    text = (PROMPTS / "general.txt").read_text()
    pool = torch.unique(model.to_tokens(text, prepend_bos=False)[0])  # words the grammar uses
    g = torch.Generator().manual_seed(seed)
    block = pool[torch.randint(len(pool), (n, period), generator=g)]
    tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), block, block], dim=1)
    res = tp.run(model, tokens, tp.Attention(), tp.LogitLens(positions="all"), batch_size=n)
    pat = res.attention.pattern  # layer batch head dest src
    q = torch.arange(period + 1, 2 * period + 1)
    score = pat[:, :, :, q, q - period + 1].mean(dim=(1, 3))  # layer head
    lp = res.logit_lens.target_logprob[-1]  # batch pos: log p(next token) at the final layer
    first, second = -lp[:, 1:period].mean(), -lp[:, period + 1 : 2 * period].mean()
    return score, float(first), float(second)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_have_the_induction_heads_their_card_names(name):
    card = json.loads((tm.model_dir(name) / "card.json").read_text())
    assert card["induction_heads"], "the shipped models are trained to form induction heads"
    model = tm.load_model(name, kind=KINDS[-1])
    score, first, second = _induction_check(model)
    named = {tuple(int(v) for v in h.split(".")) for h in card["induction_heads"]}
    for layer, head in named:
        assert score[layer, head] > 0.5, (layer, head, score)
    others = [float(score[l, h]) for l in range(score.shape[0]) for h in range(score.shape[1])
              if (l, h) not in named]
    assert max(others) < 0.2
    assert second < first - 3.0  # the second copy is predicted from the first


def test_shipped_files_are_small():
    total = sum(
        f.stat().st_size for n in ("default", "default-s1") for f in tm.model_dir(n).iterdir()
    )
    assert total < 20 * 2**20
    card_md = tm.model_dir("default").parent / "MODEL_CARD.md"
    assert card_md.exists() and "unigram" in card_md.read_text()


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_unknown_shipped_name_lists_the_valid_ones():
    with pytest.raises(tp.errors.UnknownModelError) as info:
        tm.load_model("default-s7")
    assert isinstance(info.value, TLProbesError) and isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "default-s7" in msg
    for name in tm.shipped_models():
        assert repr(name) in msg


def test_model_dir_unknown_name():
    with pytest.raises(tp.errors.UnknownModelError, match="'default-s1'"):
        tm.model_dir("big")


def test_bad_kind():
    with pytest.raises(ModelError, match="'bridge', 'hooked'"):
        tm.load_model("default", kind="sparse")


def test_directory_without_config(tmp_path):
    with pytest.raises(tp.errors.UnknownModelError, match="config.json"):
        tm.load_model(tmp_path)


@pytest.mark.skipif(TL_MAJOR >= 4, reason="TL 4 asks the hub; see the offline subprocess test")
def test_unknown_tl_name_on_hooked_lines():
    with pytest.raises(tp.errors.UnknownModelError, match="not-a-model-xyz"):
        tm.load_model("not-a-model-xyz")


@pytest.mark.slow
def test_tl_name_without_weights_offline_is_a_clear_error():
    """A TL model name whose weights are not on disk fails with the shipped names in the message."""
    import os
    import subprocess
    import sys

    code = (
        "import tlprobes as tp\nimport tlprobes.models as tm\n"
        "try:\n    tm.load_model('gpt2-xl')\n"
        "except tp.errors.UnknownModelError as e:\n    print('RAISED', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "RAISED cannot load model 'gpt2-xl'" in out.stdout, out.stderr[-2000:]
    assert "'default-s1'" in out.stdout


# --------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------


def test_corpus_is_deterministic():
    a = [d.text for d in tc.generate_documents(40, seed=7)]
    b = [d.text for d in tc.generate_documents(40, seed=7)]
    c = [d.text for d in tc.generate_documents(40, seed=8)]
    assert a == b and a != c
    assert tc.corpus_split(5, 3, seed=2) == tc.corpus_split(5, 3, seed=2)
    train, held = tc.corpus_split(5, 3, seed=2)
    assert not set(train) & set(held)


def test_corpus_has_gold_tags_and_repeats():
    docs = list(tc.generate_documents(300, seed=0))
    words = [w for d in docs for s in d.sentences for w in s.words]
    assert {w.pos for w in words} <= set(tc.POS_TAGS)
    her = [w.feat for w in words if w.text == "her"]
    assert {"Obj", "Poss"} <= set(her)
    assert {"his", "him"} <= {w.text for w in words}
    assert any(d.repeats for d in docs)
    for d in docs:
        for copy, src in d.repeats:
            assert d.sentences[copy] == d.sentences[src]
    vocab = set().union(*tc.vocabulary().values())
    assert {w.text for w in words} <= vocab


def test_sentence_spans_match_text():
    s = tc.generate_sentence(3)
    for w, (a, b) in zip(s.words, s.spans(), strict=True):
        assert s.text[a:b].lower() == w.text.lower()


def test_prompt_files_match_the_generator():
    sets = tc.prompt_sets(0)
    her = (PROMPTS / "her_sentences.txt").read_text().splitlines()
    assert her == [row[0] for row in sets["her_sentences"]]
    assert len(her) >= 54 and all(" her" in s for s in her)
    roles = (PROMPTS / "her_roles.tsv").read_text().splitlines()
    assert roles[0] == "sentence\trole" and {r.split("\t")[1] for r in roles[1:]} == {"Obj", "Poss"}
    pos = [r.split("\t") for r in (PROMPTS / "pos_words.tsv").read_text().splitlines()]
    assert pos[0] == ["sentence", "word", "pos", "word_index"]
    assert {r[2] for r in pos[1:]} == {"NOUN", "ADJ"} and all(r[1] in r[0] for r in pos[1:])
    assert (PROMPTS / "general.txt").read_text().splitlines() == [r[0] for r in sets["general"]]


def test_prompt_words_are_single_tokens():
    """Every word of every prompt is one token of the shipped tokenizer (the model's world)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tm.model_dir("default"))
    sets = tc.prompt_sets(0)
    for text in [r[0] for rows in sets.values() for r in rows]:
        pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
        n_words = len(text.replace(".", " .").replace(",", " ,").replace("'s", " 's").split())
        assert len(pieces) == n_words, (text, pieces)


# --------------------------------------------------------------------------------------------
# the training pipeline (tiny run)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_training_run_is_deterministic(tmp_path):
    from tlprobes.models.training.train import TrainConfig, train_default, write_model_card

    cfg = TrainConfig(
        seed=3,
        steps=3,
        n_train_docs=200,
        n_heldout_docs=40,
        n_embd=32,
        n_layer=2,
        n_head=2,
        batch_size=4,
        log_every=1,
        induction_periods=(5, 7),
    )
    quiet = lambda *a, **k: None  # noqa: E731
    c1 = train_default(cfg, tmp_path / "default_s3", log=quiet)
    c2 = train_default(cfg, tmp_path / "again", log=quiet)
    assert c1["heldout_loss"] == c2["heldout_loss"] and c1["head_scores"] == c2["head_scores"]
    b1 = (tmp_path / "default_s3" / "model.safetensors").read_bytes()
    assert b1 == (tmp_path / "again" / "model.safetensors").read_bytes()
    text = write_model_card([tmp_path / "default_s3"], tmp_path / "MODEL_CARD.md")
    assert "unigram" in text and "default-s3" in text
    model = tm.load_model(tmp_path / "default_s3")
    assert model.cfg.n_layers == 2
