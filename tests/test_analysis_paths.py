"""Path length, step decomposition, next-token correlation, streaming (methods.md 2.3-2.4, 6.2)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import log_softmax

from tlprobes._errors import InputError
from tlprobes.analysis import (
    PathAccumulator,
    decompose_steps,
    next_token_values,
    path_length,
    path_logit_correlation,
)


def arc(L=12, d=1600, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, 2)))
    t = np.radians(10.0 * np.arange(L + 1))
    r = 1.05 ** np.arange(L + 1)
    return (r * np.cos(t))[:, None] * q[:, 0] + (r * np.sin(t))[:, None] * q[:, 1]


def test_planar_arc_closed_form():
    x = arc()[:, None, None, :]  # [L+1, 1, 1, d]
    res = path_length(x, exclude_first=False)
    r = 1.05 ** np.arange(13)
    law = np.sqrt(r[1:] ** 2 + r[:-1] ** 2 - 2 * r[1:] * r[:-1] * np.cos(np.radians(10)))
    np.testing.assert_allclose(res.steps[:, 0, 0], law, rtol=1e-12)
    np.testing.assert_allclose(res.cumulative[:, 0, 0], np.cumsum(law), rtol=1e-12)
    assert res.total[0, 0] == pytest.approx(2.952347, abs=1e-6)
    assert res.straightness[0, 0] == pytest.approx(0.831123, abs=1e-6)
    np.testing.assert_allclose(res.relative_steps[:, 0, 0], law / r[:-1], rtol=1e-12)


def _batch(B=4, P=6, L=4, d=16, seed=0):
    return np.random.default_rng(seed).normal(size=(L + 1, B, P, d)).cumsum(0)


def test_exclude_first_switch():
    x = _batch()
    a = path_length(x)
    b = path_length(x, exclude_first=False)
    assert a.summary["step"].n.tolist() == [20] * 4 and b.summary["step"].n.tolist() == [24] * 4
    np.testing.assert_allclose(a.summary["total"].mean, a.total[:, 1:].mean())
    assert a.settings["exclude_first"] is True


def test_padding_invariance_left_and_right():
    x = _batch(B=3, P=5)
    lengths = [5, 3, 4]
    right = np.full((5, 3, 7, 16), 50.0)
    left = np.full((5, 3, 7, 16), -9.0)
    mr = np.zeros((3, 7), bool)
    ml = np.zeros((3, 7), bool)
    for b, n in enumerate(lengths):
        right[:, b, :n] = x[:, b, :n]
        mr[b, :n] = True
        left[:, b, 7 - n:] = x[:, b, :n]
        ml[b, 7 - n:] = True
    fa = path_length(right, mr).to_frame()
    fb = path_length(left, ml).to_frame()
    np.testing.assert_allclose(fa.value.to_numpy(), fb.value.to_numpy(), rtol=1e-12, equal_nan=True)
    assert np.isnan(path_length(right, mr).total[1, 3:]).all()


def test_decomposition_is_additive_and_matches_definitions():
    rng = np.random.default_rng(1)
    a, m = rng.normal(size=(2, 5, 2, 6, 1600))
    res = decompose_steps(a, m, exclude_first=False)
    step = np.linalg.norm(a + m, axis=-1)
    np.testing.assert_allclose(res.attn_proj + res.mlp_proj, res.step, rtol=1e-12)
    np.testing.assert_allclose(res.step, step, rtol=1e-12)
    np.testing.assert_allclose(res.step**2, res.attn_norm**2 + res.mlp_norm**2 + res.cross,
                               rtol=1e-10)
    assert (res.attn_norm + res.mlp_norm - res.step > 0).all()  # norms are not additive
    cos = (a * m).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(m, axis=-1))
    np.testing.assert_allclose(res.cos_attn_mlp, cos, rtol=1e-10)
    np.testing.assert_allclose(res.attn_drift[2], np.linalg.norm(a[2] - a[1], axis=-1))
    assert np.isnan(res.attn_drift[0]).all()
    r = stats.pearsonr(res.mlp_drift[3].ravel(), res.step[3].ravel())
    assert res.course_r["mlp_r"][3] == pytest.approx(r.statistic)
    assert res.course_r["mlp_p"][3] == pytest.approx(r.pvalue)
    ps = res.course_r["mlp_p"][1:]
    np.testing.assert_allclose(res.course_r["mlp_p_fdr_bh"][1:], stats.false_discovery_control(ps))


def test_decomposition_from_components_capture_matches_residual_steps():
    rng = np.random.default_rng(2)
    a, m = rng.normal(size=(2, 3, 2, 4, 8))
    x0 = rng.normal(size=(1, 2, 4, 8))
    x = np.concatenate([x0, x0 + np.cumsum(a + m, 0)])
    mask = np.ones((2, 4), bool)
    mask[1, 3] = False
    cap = types.SimpleNamespace(attn_out=torch.tensor(a), mlp_out=torch.tensor(m),
                                mask=torch.tensor(mask), meta={"mode": "raw"})
    dec = decompose_steps(cap)
    pl = path_length(x, mask)
    np.testing.assert_allclose(dec.step, pl.steps, rtol=1e-10, equal_nan=True)
    assert np.isnan(dec.attn_proj[:, 1, 3]).all()
    assert dec.settings["mode"] == "raw"
    with pytest.raises(InputError, match="shape"):
        decompose_steps(a, m[:, :1])


def test_zero_step_warns_and_gives_nan():
    a = np.zeros((2, 1, 3, 4))
    m = np.zeros((2, 1, 3, 4))
    m[:, :, :2] = 1.0
    with pytest.warns(RuntimeWarning):
        res = decompose_steps(a, m, exclude_first=False)
    assert np.isnan(res.attn_proj[:, 0, 2]).all() and res.mlp_proj[0, 0, 0] == pytest.approx(2.0)
    x = np.zeros((3, 1, 2, 4))
    with pytest.warns(RuntimeWarning):
        pl = path_length(x, exclude_first=False)
    assert np.isnan(pl.straightness).all()


def test_next_token_values_and_correlation_exclude_first_and_last():
    rng = np.random.default_rng(3)
    B, P, V = 2, 8, 11
    z = rng.normal(size=(B, P, V))
    tok = rng.integers(0, V, size=(B, P))
    mask = np.ones((B, P), bool)
    mask[1, 6:] = False
    lp = next_token_values(z, tok, mask)
    manual = log_softmax(z, -1)[0, 2, tok[0, 3]]
    assert lp[0, 2] == pytest.approx(manual)
    assert np.isnan(lp[0, 7]) and np.isnan(lp[1, 5:]).all()
    assert next_token_values(z, tok, kind="logit")[1, 0] == pytest.approx(z[1, 0, tok[1, 1]])
    path = rng.normal(size=(B, P))
    path[:, 0] = 100.0  # first token outlier (would dominate Pearson)
    c = path_logit_correlation(path, lp, mask)
    keep = np.zeros((B, P), bool)
    keep[0, 1:7] = True
    keep[1, 1:5] = True
    ref = stats.pearsonr(path[keep], lp[keep])
    assert c.n == 10 and c.pearson_r == pytest.approx(ref.statistic)
    assert c.excluded == ("padding", "first", "last")
    assert path_logit_correlation(path, lp, mask, exclude_first=False).n == 12


def test_path_accumulator_merge_equals_all_at_once_and_steps_capture():
    x = _batch(B=6, P=5)
    mask = np.ones((6, 5), bool)
    mask[2, 3:] = False
    whole = PathAccumulator()
    whole.update(x, mask)
    a, b = PathAccumulator(), PathAccumulator()
    a.update(x[:, :4], mask[:4])
    b.update(x[:, 4:], mask[4:])
    merged, full = a.merge(b).compute(), whole.compute()
    np.testing.assert_allclose(merged.steps.summary["all"].mean, full.steps.summary["all"].mean)
    np.testing.assert_allclose(merged.total["all"].sd, full.total["all"].sd, rtol=1e-12)
    direct = path_length(x, mask)
    np.testing.assert_allclose(full.steps.summary["all"].mean, direct.summary["step"].mean)
    np.testing.assert_allclose(full.straightness["all"].mean,
                               direct.summary["straightness"].mean)
    cap = types.SimpleNamespace(step=torch.tensor(np.nan_to_num(direct.steps)),
                                mask=torch.tensor(mask))
    s = PathAccumulator()
    s.update(cap)
    np.testing.assert_allclose(s.compute().total["all"].mean, direct.summary["total"].mean)
    assert {"step_mean", "total_mean", "straightness_sd"} <= set(full.to_frame().statistic)


def test_path_accumulator_groups_and_mode_guard():
    x = _batch(B=6, P=5)
    acc = PathAccumulator()
    acc.update(x[:, :3], group="noun")
    acc.update(x[:, 3:], group="adj")
    res = acc.compute()
    np.testing.assert_allclose(res.total["noun"].mean, path_length(x[:, :3]).summary["total"].mean)
    np.testing.assert_allclose(res.total["adj"].mean, path_length(x[:, 3:]).summary["total"].mean)
    raw = types.SimpleNamespace(resid=torch.tensor(x), mask=torch.ones(6, 5, dtype=torch.bool),
                                meta={"mode": "raw"})
    compat = types.SimpleNamespace(resid=torch.tensor(x), mask=torch.ones(6, 5, dtype=torch.bool),
                                   meta={"mode": "compat"})
    a, b = PathAccumulator(), PathAccumulator()
    a.update(raw)
    with pytest.raises(InputError, match="compat"):
        a.update(compat)
    b.update(compat)
    with pytest.raises(InputError, match="merge"):
        a.merge(b)
    with pytest.raises(InputError, match="merge"):
        a.merge(PathAccumulator(exclude_first=False))
    assert a.merge(PathAccumulator()).compute().settings["mode"] == "raw"


def test_path_length_from_steps_capture_matches_states():
    x = _batch(B=3, P=4)
    mask = np.ones((3, 4), bool)
    mask[2, 2:] = False
    ref = path_length(x, mask)
    cap = types.SimpleNamespace(step=torch.tensor(np.linalg.norm(np.diff(x, axis=0), axis=-1)),
                                norm=torch.tensor(np.linalg.norm(x, axis=-1)),
                                mask=torch.tensor(mask), meta={"mode": "raw"})
    res = path_length(cap)
    np.testing.assert_allclose(res.total, ref.total, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.relative_steps, ref.relative_steps, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.summary["step"].mean, ref.summary["step"].mean)
    assert np.isnan(res.straightness).all() and res.settings["from_steps"] is True


def test_decompose_steps_from_steps_capture():
    rng = np.random.default_rng(4)
    a, m = rng.normal(size=(2, 3, 2, 4, 8))
    ref = decompose_steps(a, m)
    cap = types.SimpleNamespace(
        step=torch.tensor(np.linalg.norm(a + m, axis=-1)), mask=torch.ones(2, 4, dtype=torch.bool),
        attn_proj=torch.tensor(ref.attn_proj), mlp_proj=torch.tensor(ref.mlp_proj),
        attn_norm=torch.tensor(ref.attn_norm), mlp_norm=torch.tensor(ref.mlp_norm),
        attn_mlp_cos=torch.tensor(ref.cos_attn_mlp), meta={"mode": "raw"})
    res = decompose_steps(cap)
    np.testing.assert_allclose(res.cross, ref.cross, rtol=1e-10)
    np.testing.assert_allclose(res.summary["attn_proj"].mean, ref.summary["attn_proj"].mean)
    assert np.isnan(res.attn_drift).all() and res.settings["source"] == "steps"
    cap.attn_norm = None
    with pytest.raises(InputError, match="attn_norm"):
        decompose_steps(cap)
