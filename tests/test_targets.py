"""Target words split into several tokens, with GPT-2's real BPE: offsets count from the word's
boundaries, the piece that stands for the word is explicit, and every probe and analyzer resolves
a word through the same function (so they all land on the same tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tlprobes as tp
from tlprobes._errors import PositionError
from tlprobes.capture._positions import resolve_positions, target_indices, word_spans

SENTENCES = [
    "Yesterday Anastasia gave her a book.",
    "I think that Anastasia saw her at the market.",
    "The police questioned Anastasia and her friend.",
]
PIECES = [" An", "ast", "asia"]


def _toks(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids, [tok.decode([i]) for i in ids]


def test_gpt2_splits_anastasia_as_the_issue_says(gpt2_tokenizer):
    ids = gpt2_tokenizer(" Anastasia", add_special_tokens=False)["input_ids"]
    assert [gpt2_tokenizer.decode([i]) for i in ids] == PIECES


@pytest.mark.parametrize(
    ("target", "want"),
    [
        (tp.Target(" Anastasia"), ["asia"]),
        (tp.Target(" Anastasia", piece="first"), [" An"]),
        (tp.Target(" Anastasia", piece="mean"), PIECES),
        (tp.Target(" Anastasia", offset=-1), [" think"]),  # the token before ' An', not 'ast'
        (tp.Target(" Anastasia", offset=-2), ["I"]),
        (tp.Target(" Anastasia", offset=1), [" saw"]),  # the token after 'asia'
        (tp.Target(" Anastasia", offset=2), [" her"]),
        (tp.Target(" her", offset=-1), [" saw"]),
    ],
)
def test_target_indices_count_from_word_boundaries(gpt2_tokenizer, target, want):
    ids, strs = _toks(gpt2_tokenizer, "I think Anastasia saw her at the market.")
    word = gpt2_tokenizer(target.word, add_special_tokens=False)["input_ids"]
    (by_ids,) = target_indices(ids, word, target)
    (by_strings,) = target_indices(strs, target.word, target)
    assert by_ids == by_strings  # token ids (probes) and token strings (analyzers) agree
    assert [strs[i] for i in by_ids] == want


def test_word_spans_and_errors_name_the_problem():
    assert word_spans(["a", " An", "ast", "asia", " An"], " Anastasia") == [(1, 3)]
    assert word_spans(["x", " Anast", "asia"], " Anastasia") == [(1, 2)]
    with pytest.raises(PositionError, match="absent"):
        target_indices(["a", "b"], " Anastasia", tp.Target(" Anastasia"))
    with pytest.raises(PositionError, match="outside"):
        target_indices([" An", "ast", "asia"], " Anastasia", tp.Target(" Anastasia", offset=-1))
    with pytest.raises((PositionError, TypeError), match="piece"):  # or the Literal type check
        tp.Target(" her", piece="middle")


def test_resolve_positions_uses_boundaries_with_padding(gpt2_tokenizer):
    rows = [gpt2_tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    width = max(map(len, rows)) + 2
    for side in ("right", "left"):
        toks = torch.full((len(rows), width), 50256)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for b, r in enumerate(rows):
            sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
            toks[b, sl] = torch.tensor(r)
            mask[b, sl] = True

        def enc(w):
            return gpt2_tokenizer(w, add_special_tokens=False)["input_ids"]

        for target, want in ((tp.Target(" Anastasia", offset=-1), None),
                             (tp.Target(" Anastasia"), "asia"),
                             (tp.Target(" Anastasia", piece="first"), " An")):
            pos, valid = resolve_positions(target, toks, mask, encode_word=enc)
            got = [gpt2_tokenizer.decode([int(toks[b, pos[b, 0]])]) for b in range(len(rows))]
            if want is None:  # the token before the word: ' Yesterday', ' that', ' questioned'
                assert got == ["Yesterday", " that", " questioned"]
            else:
                assert got == [want] * len(rows)
        pos, valid = resolve_positions(tp.Target(" Anastasia", piece="mean"), toks, mask,
                                       encode_word=enc)
        assert valid.sum(1).tolist() == [3, 3, 3]


def test_probes_and_analyzers_resolve_a_word_to_the_same_tokens(gpt2_bpe_dir):
    from test_course_replica import _hf, _tl_from_dir

    model = _tl_from_dir(gpt2_bpe_dir, *_hf(gpt2_bpe_dir))  # bridge, or HookedTransformer on TL 2
    res = tp.run(model, SENTENCES, tp.Residual(),
                 tp.Residual(positions=tp.Target(" Anastasia"), name="word"),
                 tp.Residual(positions=tp.Target(" Anastasia", offset=-1), name="before"),
                 tp.Residual(positions=tp.Target(" Anastasia", piece="mean"), name="pieces"),
                 batch_size=2)
    r = res.residual
    at = tp.angle_trajectory(r, " Anastasia", robust=False)  # used to raise "occurs in no sequence"
    np.testing.assert_array_equal(at.target_slots, res.word.positions[:, 0].numpy())
    np.testing.assert_array_equal(at.before_slots, res.before.positions[:, 0].numpy())
    strs = [res.inputs.str_tokens[b][p] for b, p in enumerate(at.target_slots)]
    assert strs == ["asia"] * 3
    # the trajectory's target angle is the angle of that slot; "before" is the token before ' An'
    x = r.resid.double().numpy()
    b = 1
    t, p = at.target_slots[b], at.before_slots[b]
    np.testing.assert_allclose(at.angles["target"][:, b], tp.analysis.angle(x[1:, b, t], x[:-1, b, t]))
    np.testing.assert_allclose(at.angles["before"][:, b], tp.analysis.angle(x[1:, b, p], x[:-1, b, p]))
    # piece="mean": the angle of the pieces' mean vector, the same pieces the probe keeps
    atm = tp.angle_trajectory(r, tp.Target(" Anastasia", piece="mean"), robust=False)
    mean_vec = res.pieces.resid[:, b].double().mean(1).numpy()
    np.testing.assert_allclose(atm.angles["target"][:, b], tp.analysis.angle(mean_vec[1:], mean_vec[:-1]))
    # within-layer angles, the geometry analyzers and the decomposition use the same resolver
    wl = tp.analysis.within_layer_angles(r, " Anastasia")
    np.testing.assert_allclose(wl.target[:, b], tp.analysis.angle(x[:, b, t], x[:, b, p]))
    # a capture holding only the word's slot still resolves (positions map back to slots)
    with pytest.warns(RuntimeWarning, match="fewer than 2 pairs"):  # no "before" slot was kept
        atw = tp.angle_trajectory(res.word, " Anastasia", robust=False)
    assert (atw.target_slots == 0).all() and (atw.before_slots == -1).all()
