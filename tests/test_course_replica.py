"""The suites' course columns against an independent re-implementation of the course notebooks.

The replicas below follow ``Part5_ObservationInterp/token/part5_token_embeddingsAngleChange.ipynb``
and ``Part5_ObservationInterp/layer/part5_layer_logitlens.ipynb`` (github.com/mikexcohen/LLM_course)
line by line on Hugging Face's ``output_hidden_states``: one batch of all sentences, GPT-2-style
tokenisation without BOS, right padding with pad = EOS, ``attention_mask`` passed. The only
departures: float64 acos with a clip (the notebook's float32 acos gives NaN on parallel vectors),
and the control's random draws, which come from ``numpy.random.default_rng(seed)`` in the order
tlprobes documents (per sentence, per layer: layer_u, position_u, layer_v, position_v) instead of
``torch.randint``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HAS_BRIDGE
from scipy import stats

import tlprobes as tp
from tlprobes.suites._study import StudyContext
from tlprobes.suites.studies.angles import STUDY as ANGLES

# a few of the course's own (Claude-generated) sentences, plus a multi-token name
COURSE_SENTENCES = [
    "I saw her at the market.",
    "She gave her the book.",
    "They asked her for advice.",
    "The dog followed her home.",
    "He saw her at the park yesterday.",
    "Did you give her your address?",
    "I haven't seen her in ages.",
    "They congratulated her on his success.",
    "The teacher praised her for his work.",
    "The jury found her not guilty.",
    "Anastasia said the police questioned her yesterday.",
    "The author based the character on her.",
]
SEED = 5
BRIDGE_ONLY = "the HF-equivalence of padded positions is a bridge property"


def _hf(path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    try:
        model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    except TypeError:  # pragma: no cover - older transformers
        model = GPT2LMHeadModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.eos_token  # the course: "need to specify a padding token"
    tok.padding_side = "right"
    return model, tok


def _acos_deg(v, u):
    v, u = v.double(), u.double()
    c = torch.dot(v, u) / (torch.linalg.norm(v) * torch.linalg.norm(u))
    return float(torch.rad2deg(torch.acos(c.clamp(-1, 1))))


def course_angles(hf, tok, sentences, seed):
    """The notebook's loop. Returns angles [L, S, 3] (deg), the draws [L, S, 4], the t-test."""
    tokens = tok(sentences, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        outputs = hf(**tokens, output_hidden_states=True)
    n_hiddens = len(outputs.hidden_states)
    seq_len = outputs.hidden_states[3 if n_hiddens > 3 else 1].shape[1]
    target_token = tok.encode(" her", add_special_tokens=False)[0]
    rng = np.random.default_rng(seed)
    angles = np.zeros((n_hiddens - 1, len(sentences), 3))
    draws = np.zeros((n_hiddens - 1, len(sentences), 4), int)
    for senti in range(len(sentences)):
        targidx = tokens["input_ids"][senti].tolist().index(target_token)
        for layeri in range(1, n_hiddens):
            v = outputs.hidden_states[layeri - 1][senti, targidx, :]
            u = outputs.hidden_states[layeri][senti, targidx, :]
            angles[layeri - 1, senti, 0] = _acos_deg(v, u)
            v = outputs.hidden_states[layeri - 1][senti, targidx - 1, :]
            u = outputs.hidden_states[layeri][senti, targidx - 1, :]
            angles[layeri - 1, senti, 1] = _acos_deg(v, u)
            lu, iu = rng.integers(1, n_hiddens), rng.integers(seq_len)
            lv, iv = rng.integers(1, n_hiddens), rng.integers(seq_len)
            draws[layeri - 1, senti] = (lu, iu, lv, iv)
            angles[layeri - 1, senti, 2] = _acos_deg(
                outputs.hidden_states[lu][senti, iu, :], outputs.hidden_states[lv][senti, iv, :])
    tres = stats.ttest_rel(angles[:, :, 0].T, angles[:, :, 1].T)
    issig = tres.pvalue < 0.05 / n_hiddens
    return angles, draws, tres, issig, tokens


def _suite_course(model, sentences, batch_size):
    analysis = {k: v for k, (_, v) in ANGLES.schema.items()}
    analysis.update(controls=["course", "clean"], n_resamples=99)
    ctx = StudyContext(model=model, prompts=sentences, columns={}, target=" her", analysis=analysis,
                       batch_size=batch_size, seed=SEED, progress=False)
    return ANGLES.compute(ctx)


def _check_suite_equals_replica(model, hf, tok, sentences, batch_sizes):
    ref, draws, tres, issig, _ = course_angles(hf, tok, sentences, SEED)
    for bs in batch_sizes:
        out = _suite_course(model, sentences, bs)
        per = out.tables["angles_course_per_sentence"]
        for k, cond in enumerate(("target", "before", "control")):
            got = per[per.condition == cond].pivot(index="layer", columns="sentence",
                                                   values="angle_deg").to_numpy()
            np.testing.assert_allclose(got, ref[:, :, k], atol=5e-4,
                                       err_msg=f"{cond}, batch_size={bs}")
        df = out.tables["angles_course"]
        tb = df[df.group == "target-before"].pivot(index="layer", columns="statistic",
                                                   values="value")
        np.testing.assert_allclose(tb["t"].to_numpy(), tres.statistic, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(tb["reject_bonferroni"].to_numpy() > 0.5, issig)
        m = ref.shape[0] + 1  # the course's .05/n_hiddens
        np.testing.assert_allclose(tb["p_bonferroni"].to_numpy(), np.minimum(1, tres.pvalue * m),
                                   rtol=1e-2, atol=1e-6)
        assert "target-control" not in set(df.group)  # the course plots its control, never tests it
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BRIDGE, reason=BRIDGE_ONLY)
def test_rotation_suite_course_column_equals_notebook_on_shipped_model():
    from tlprobes.models import model_dir

    # a HookedTransformer gives padding tokens a zero positional embedding, so its padded states
    # (which the course's control reads) are not HF's; the bridge runs HF's own modules
    model = tp.load_model("default", kind="bridge")
    hf, tok = _hf(model_dir("default"))
    sentences = [s.strip() for s in open(_prompts_file()) if s.strip()][:24]
    out = _check_suite_equals_replica(model, hf, tok, sentences, batch_sizes=(1, 5, len(sentences)))
    proto = out.tables["protocol"].set_index("choice")
    assert proto.loc["bos", "course"] == "no" and proto.loc["bos", "clean"] == "yes"
    assert proto.loc["final_state", "course"] == "ln_f(x_L)"
    assert "merge" not in proto.loc["batch_composition", "course"]


@pytest.mark.skipif(not HAS_BRIDGE, reason=BRIDGE_ONLY)
def test_rotation_course_column_equals_notebook_on_gpt2_bpe(gpt2_bpe_dir):
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(str(gpt2_bpe_dir), device="cpu")
    hf, tok = _hf(gpt2_bpe_dir)
    _check_suite_equals_replica(model, hf, tok, COURSE_SENTENCES, batch_sizes=(1, 4, 12))


@pytest.mark.skipif(not HAS_BRIDGE, reason="needs the TransformerBridge")
def test_course_control_draws_are_reproducible_and_never_merge_padding(gpt2_bpe_dir):
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(str(gpt2_bpe_dir), device="cpu")
    _, draws, _, _, tokens = course_angles(*_hf(gpt2_bpe_dir), COURSE_SENTENCES, SEED)
    runs = [tp.run(model, COURSE_SENTENCES, tp.Residual(final_state="ln_f"), batch_size=bs,
                   prepend_bos=False, pad_to="longest", progress=False) for bs in (2, 12)]
    for res in runs:
        np.testing.assert_array_equal(res.inputs.tokens.numpy(), tokens["input_ids"].numpy())
        at = tp.angle_trajectory(res.residual, " her", control="course", seed=SEED, robust=False)
        np.testing.assert_array_equal(at.control_indices, draws)  # the same draws, exposed
        assert np.isfinite(at.angles["control"]).all()
    # without pad_to, batches of different widths leave merge padding: refused, not NaN
    ragged = tp.run(model, COURSE_SENTENCES, tp.Residual(), batch_size=3, prepend_bos=False,
                    progress=False)
    with pytest.raises(tp.TLProbesError, match="pad_to='longest'"):
        tp.angle_trajectory(ragged.residual, " her", control="course")


# ------------------------------------------------------------------------------------ seed 004
def course_lens(hf, tok, text):
    """The logit-lens notebook: W_U applied to hidden_states[1:] of one text (no BOS)."""
    tokens = tok.encode(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = hf(tokens, output_hidden_states=True)
    unembedding = hf.lm_head.weight.detach()
    preds, lsm = [], []
    for acts in output.hidden_states[1:]:
        logits = acts[0] @ unembedding.t()
        preds.append(logits.argmax(dim=-1))
        lsm.append(torch.log_softmax(logits, -1))
    return tokens, torch.stack(preds), torch.stack(lsm), output.logits[0]


def _tl_from_dir(path, hf, tok):
    """The TL model of an HF dir on this TL line: the bridge, or (TL 2) an unprocessed
    HookedTransformer with the same weights."""
    if HAS_BRIDGE:
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(str(path), device="cpu")
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new",
        normalization_type="LN", eps=1e-5, original_architecture="GPT2LMHeadModel", device="cpu")
    ht = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    ht.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False)
    return ht.eval()


@pytest.mark.parametrize("which", ["shipped", "gpt2_bpe"])
def test_lens_course_variant_equals_notebook(which, request):
    if which == "shipped":
        from tlprobes.models import model_dir

        path = model_dir("default")
        model = tp.load_model("default")  # this TL line's default kind (bridge or hooked)
        hf, tok = _hf(path)
    else:
        path = request.getfixturevalue("gpt2_bpe_dir")
        hf, tok = _hf(path)
        model = _tl_from_dir(path, hf, tok)
    text = "Anastasia said the way you do anything is the way you do everything"
    tokens, preds, lsm, logits = course_lens(hf, tok, text)
    res = tp.run(model, [text], tp.LogitLens(top_k=1, apply_ln=False),
                 tp.LogitLens(top_k=1, name="faithful"), tp.Residual(final_state="ln_f"),
                 tp.Residual(name="raw"), prepend_bos=False)
    assert res.inputs.tokens[0].tolist() == tokens[0].tolist()
    lens = res.logit_lens
    # states 1..L of the course variant are the notebook's rows; the last is the model's prediction
    np.testing.assert_array_equal(lens.top_ids[1:, 0, :, 0].numpy(), preds.numpy())
    nxt = tokens[0, 1:]
    ref_lp = lsm[:, :-1].gather(-1, nxt[None, :, None].expand(lsm.shape[0], -1, 1))[..., 0]
    np.testing.assert_allclose(lens.target_logprob[1:, 0, :-1].numpy(), ref_lp.numpy(), atol=2e-4)
    np.testing.assert_array_equal(preds[-1].numpy(), logits.argmax(-1).numpy())
    # both variants agree at x_L (the model's own prediction), not before it
    np.testing.assert_allclose(res.faithful.target_logprob[-1], lens.target_logprob[-1], atol=1e-5)
    # the analyzer: on HF's own hidden states (already normalised at the end), and on captures
    hs = torch.stack(hf(tokens, output_hidden_states=True).hidden_states)[:, :, :]
    W_U = hf.lm_head.weight.detach().T
    tg = torch.cat([nxt, torch.tensor([-1])])[None]
    a = tp.analysis.lens_readout(hs, W_U, targets=tg, apply_ln=False, ln="identity")
    np.testing.assert_allclose(a.target_logprob[1:, 0, :-1], ref_lp.numpy(), atol=2e-4)
    for cap in (res.residual, res.raw):  # ln_f-marked or raw: the capture carries the model's norm
        b = tp.analysis.lens_readout(cap, W_U, targets=tg, apply_ln=False)
        np.testing.assert_allclose(b.target_logprob[1:, 0, :-1], ref_lp.numpy(), atol=2e-4)
    assert "course" in b.settings["variant"]


def _prompts_file():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "probes" / "prompts" / "her_sentences.txt"
