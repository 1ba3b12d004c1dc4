"""Angles: the stable primitive, the seed-003 protocol, controls, padding, streaming."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from scipy import stats

from tlprobes._errors import InputError, PositionError
from tlprobes.analysis import (
    AngleAccumulator,
    angle,
    angle_trajectory,
    layer_angles,
    within_layer_angles,
)


def arc(L: int = 12, d: int = 1600, step_deg: float = 10.0, growth: float = 1.05, seed: int = 0):
    """methods.md 6.2: x_l = r_l (cos t_l e1 + sin t_l e2) in a random 2-frame of R^d."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, 2)))
    t = np.radians(step_deg * np.arange(L + 1))
    r = growth ** np.arange(L + 1)
    return (r * np.cos(t))[:, None] * q[:, 0] + (r * np.sin(t))[:, None] * q[:, 1]


def fake_residual(resid, mask, str_tokens=None, mode="raw"):
    meta = types.SimpleNamespace(mode=mode, model_name="toy", tl_version="4.3",
                                 to_dict=lambda: {"mode": mode, "model_name": "toy"})
    B, P = mask.shape
    pos = np.where(mask, np.cumsum(mask, 1) - 1, -1)
    return types.SimpleNamespace(resid=torch.as_tensor(resid, dtype=torch.float32),
                                 mask=torch.as_tensor(mask), positions=torch.as_tensor(pos),
                                 attention_mask=torch.as_tensor(mask), str_tokens=str_tokens,
                                 meta=meta, final_state="raw")


def test_angle_planar_arc_is_exactly_ten_degrees():
    x = arc()
    np.testing.assert_allclose(angle(x[1:], x[:-1]), 10.0, atol=1e-9)


def test_angle_matches_clipped_arccos_and_broadcasts():
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(5, 3, 8)), rng.normal(size=(3, 8))
    cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    np.testing.assert_allclose(angle(u, v), np.degrees(np.arccos(np.clip(cos, -1, 1))), atol=1e-10)
    np.testing.assert_allclose(angle(u, v, units="rad"), np.arccos(np.clip(cos, -1, 1)), atol=1e-12)
    assert angle(torch.tensor(u, dtype=torch.float32), torch.tensor(v)).dtype == np.float64


def test_angle_is_stable_for_tiny_angles_where_acos_is_not():
    x = arc(L=1, d=1600, step_deg=0.001)
    assert abs(float(angle(x[1], x[0])) - 0.001) < 1e-9
    u = np.random.default_rng(2).normal(size=1600)
    assert float(angle(u, 1.0001 * u)) < 1e-6  # parallel: 0, never NaN


def test_angle_zero_vector_warns_and_marks_nan():
    with pytest.warns(RuntimeWarning, match="NaN"):
        out = angle(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([1.0, 1.0]))
    assert np.isnan(out[0]) and out[1] == pytest.approx(45.0)
    with pytest.raises(InputError, match="grad"):
        angle(np.ones(2), np.ones(2), units="grad")


def _study_data(B=8, P=6, L=5, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(L + 1, B, P, d)) + rng.normal(size=(1, B, P, d)) * 2


def test_trajectory_conditions_equal_direct_angles_and_tests_match_scipy():
    x = _study_data()
    t = np.array([3, 2, 4, 5, 3, 1, 2, 4])
    res = angle_trajectory(x, t, control="clean", seed=3)
    bi = np.arange(8)
    np.testing.assert_allclose(res.angles["target"], angle(x[1:, bi, t], x[:-1, bi, t]))
    np.testing.assert_allclose(res.angles["before"], angle(x[1:, bi, t - 1], x[:-1, bi, t - 1]))
    for li in range(5):
        tt = stats.ttest_rel(res.angles["target"][li], res.angles["before"][li])
        assert res.tests["target-before"].t[li] == pytest.approx(tt.statistic)
        assert res.tests["target-before"].p[li] == pytest.approx(tt.pvalue)
    assert res.layers.tolist() == [1, 2, 3, 4, 5]
    df = res.to_frame()
    assert set(df.columns) == {"layer", "group", "statistic", "value"}
    row = df[(df.group == "target") & (df.statistic == "mean") & (df.layer == 2)]
    assert row.value.item() == pytest.approx(res.angles["target"][1].mean())


def test_target_rotates_more_than_word_before_is_detected():
    rng = np.random.default_rng(4)
    L, B, P, d = 6, 20, 5, 64
    x = np.empty((L + 1, B, P, d))
    for b in range(B):
        for j in range(P):
            step = 25.0 if j == 3 else 10.0
            x[:, b, j] = arc(L, d, step + rng.normal(0, 1), 1.0, seed=b * P + j)
    res = angle_trajectory(x, np.full(B, 3))
    assert np.allclose(res.summary["target"].mean, 25, atol=1)
    assert np.allclose(res.summary["before"].mean, 10, atol=1)
    assert res.tests["target-before"].reject_bonferroni.all()
    assert (res.tests["target-before"].d_z > 3).all()


def test_course_control_draws_layers_1_to_L_and_padded_positions():
    x = _study_data(B=30, P=7)
    mask = np.ones((30, 7), bool)
    mask[:, 5:] = False  # two padded slots per row
    res = angle_trajectory(x, np.full(30, 3), mask=mask, control="course", seed=11)
    idx = res.control_indices
    assert idx[..., [0, 2]].min() >= 1 and idx[..., [0, 2]].max() == 5
    assert idx[..., [1, 3]].max() == 6  # padding included, as in the course
    li, b = 2, 7
    lu, iu, lv, iv = idx[li, b]
    assert res.angles["control"][li, b] == pytest.approx(float(angle(x[lu, b, iu], x[lv, b, iv])))
    again = angle_trajectory(x, np.full(30, 3), mask=mask, control="course", seed=11)
    np.testing.assert_array_equal(again.control_indices, idx)
    assert res.settings["control"] == "course" and res.settings["seed"] == 11


@pytest.mark.parametrize("control", ["clean", "layer_matched"])
def test_clean_controls_use_valid_distinct_slots_only(control):
    x = _study_data(B=10, P=7)
    mask = np.ones((10, 7), bool)
    mask[:, 5:] = False
    res = angle_trajectory(x, np.full(10, 3), mask=mask, control=control)
    idx = res.control_indices
    assert idx[..., [1, 3]].max() <= 4 and idx[..., [1, 3]].min() >= 1  # no padding, no first
    assert (idx[..., 1] != idx[..., 3]).all()
    layer_rows = np.arange(5)[:, None]
    if control == "clean":
        assert (idx[..., 0] == layer_rows).all() and (idx[..., 2] == layer_rows + 1).all()
    else:
        assert (idx[..., 0] == layer_rows + 1).all() and (idx[..., 2] == layer_rows + 1).all()


def test_layer_matched_control_recovers_shared_mean_null():
    # cos -> |mu|^2 / (|mu|^2 + d sigma^2): |mu|^2 = d sigma^2 gives 60 degrees (methods.md 2.1)
    rng = np.random.default_rng(5)
    L, B, P, d = 2, 40, 6, 2000
    mu = rng.normal(size=d)
    mu *= np.sqrt(d) / np.linalg.norm(mu)
    x = mu + rng.normal(size=(L + 1, B, P, d))
    res = angle_trajectory(x, np.full(B, 2), control="layer_matched")
    np.testing.assert_allclose(res.summary["control"].mean, 60.0, atol=0.5)


@pytest.mark.parametrize("control", ["clean", "layer_matched"])
def test_padding_never_leaks(control):
    x = _study_data(B=4, P=5)
    right = np.zeros((6, 4, 8, 32)) + 1e3  # padding values that would wreck any leaking mean
    left = np.zeros((6, 4, 8, 32)) - 7e2
    right[:, :, :5] = x
    left[:, :, 3:] = x
    mr = np.zeros((4, 8), bool)
    mr[:, :5] = True
    ml = np.zeros((4, 8), bool)
    ml[:, 3:] = True
    a = angle_trajectory(right, np.full(4, 3), mask=mr, control=control).to_frame()
    b = angle_trajectory(left, np.full(4, 6), mask=ml, control=control).to_frame()
    np.testing.assert_allclose(a.value.to_numpy(), b.value.to_numpy(), rtol=1e-12, equal_nan=True)


def test_string_target_capture_and_missing_targets():
    x = _study_data(B=3, P=4, L=2, d=8)
    toks = [["a", " saw", " her", " x"], ["b", " her", " y", " z"], ["c", " d", " e", " f"]]
    cap = fake_residual(x, np.ones((3, 4), bool), toks, mode="compat")
    res = angle_trajectory(cap, " her")
    assert res.target_slots.tolist() == [2, 1, -1]
    assert res.valid["target"].tolist() == [True, True, False]
    assert res.summary["target"].n.tolist() == [2, 2]
    assert res.settings["mode"] == "compat"
    with pytest.raises(PositionError, match="' him'"):
        angle_trajectory(cap, " him")
    with pytest.raises(InputError, match="bogus"):
        angle_trajectory(cap, " her", control="bogus")


def test_zero_vectors_give_nan_and_warning_not_crash():
    x = _study_data(B=5, P=5, L=3, d=8)
    x[2, 1, 3] = 0.0
    with pytest.warns(RuntimeWarning):
        res = angle_trajectory(x, np.full(5, 3))
    assert np.isnan(res.angles["target"][1, 1]) and np.isnan(res.angles["target"][2, 1])
    assert res.summary["target"].n_nan.tolist() == [0, 1, 1]
    assert np.isfinite(res.summary["target"].mean).all()


def test_bonferroni_states_uses_n_hiddens():
    x = _study_data()
    t = np.full(8, 3)
    a = angle_trajectory(x, t, bonferroni="bonferroni").tests["target-before"]
    b = angle_trajectory(x, t, bonferroni="bonferroni_states").tests["target-before"]
    np.testing.assert_allclose(np.minimum(1, a.p * 6), b.p_bonferroni)  # L = 5 tests, m = 6


def test_angle_accumulator_merge_equals_all_at_once():
    x = _study_data(B=9, P=5)
    mask = np.random.default_rng(3).random((9, 5)) > 0.2
    mask[:, 0] = True
    whole = AngleAccumulator()
    whole.update(x, mask)
    parts = [AngleAccumulator() for _ in range(3)]
    for i, p in enumerate(parts):
        p.update(x[:, 3 * i:3 * i + 3], mask[3 * i:3 * i + 3])
    merged = parts[0].merge(parts[1]).merge(parts[2]).compute().summary["all"]
    full = whole.compute().summary["all"]
    for k in ("n", "mean", "sd", "ci_low", "ci_high"):
        np.testing.assert_allclose(getattr(merged, k), getattr(full, k), rtol=1e-12)
    th = layer_angles(x, mask)
    inc = mask.copy()
    inc[:, 0] = False
    np.testing.assert_allclose(full.mean, [th[li][inc].mean() for li in range(5)])
    steps = types.SimpleNamespace(angle=torch.tensor(th), mask=torch.tensor(mask))
    s = AngleAccumulator()
    s.update(steps)
    np.testing.assert_allclose(s.compute().summary["all"].mean, full.mean, rtol=1e-6)


def test_within_layer_angles():
    x = _study_data(B=3, P=6, L=2, d=16)
    res = within_layer_angles(x, np.array([3, 4, 2]), exclude_first=False)
    np.testing.assert_allclose(res.adjacent[:, 1, 2], angle(x[:, 1, 2], x[:, 1, 1]))
    assert np.isnan(res.adjacent[:, :, 0]).all()
    np.testing.assert_allclose(res.target[:, 0], angle(x[:, 0, 3], x[:, 0, 2]))
    i, j = res.control_pairs[2]
    assert i < j and 2 not in (i, j)  # row 2 targets slot 2
    np.testing.assert_allclose(res.control[:, 2], angle(x[:, 2, i], x[:, 2, j]))
    assert res.layers.tolist() == [0, 1, 2]
    assert {"adjacent", "control", "target"} <= set(res.to_frame().group)


def test_first_token_follows_positions_and_attention_mask():
    x = _study_data(B=2, P=3, L=2, d=8)
    # slots selected from longer prompts; row 1 is left padded (first real token at position 2)
    pos = torch.tensor([[0, 4, 6], [2, 3, 5]])
    am = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    cap = types.SimpleNamespace(resid=torch.tensor(x), mask=torch.ones(2, 3, dtype=torch.bool),
                                positions=pos, attention_mask=am, meta={"mode": "raw"})
    acc = AngleAccumulator()
    acc.update(cap)
    assert acc.compute().summary["all"].n.tolist() == [4, 4]  # slot 0 of each row is excluded
    sel = types.SimpleNamespace(resid=torch.tensor(x), mask=torch.ones(2, 3, dtype=torch.bool),
                                positions=torch.tensor([[3, 4, 6], [2, 3, 5]]), attention_mask=am,
                                meta={"mode": "raw"})
    acc = AngleAccumulator()
    acc.update(sel)
    assert acc.compute().summary["all"].n.tolist() == [5, 5]  # row 0 never saw its first token


# ------------------------------------------------------------------ issue 11: protocol, split
def test_rotation_decomposition_is_exact():
    from tlprobes.analysis import rotation_decomposition

    rng = np.random.default_rng(5)
    L, B, P, d = 4, 3, 5, 16
    x0 = rng.normal(size=(B, P, d)) * 3
    xs, mids = [x0], []
    for _ in range(L):
        mid = xs[-1] + rng.normal(size=(B, P, d))
        mids.append(mid)
        xs.append(mid + rng.normal(size=(B, P, d)) * 2)
    x, mid = np.stack(xs), np.stack(mids)
    r = rotation_decomposition(x, mid=mid, exclude_first=False)
    np.testing.assert_allclose(r.angle, layer_angles(x), atol=1e-10)
    # the two pushes add up to the orthogonal part of the step, and rebuild the angle
    step = x[1:] - x[:-1]
    xh = x[:-1] / np.linalg.norm(x[:-1], axis=-1, keepdims=True)
    par = (step * xh).sum(-1)
    perp = np.linalg.norm(step - par[..., None] * xh, axis=-1)
    np.testing.assert_allclose(r.attn_perp + r.mlp_perp, perp, rtol=1e-10)
    np.testing.assert_allclose(r.attn_par + r.mlp_par, par, rtol=1e-10, atol=1e-10)
    rebuilt = np.degrees(np.arctan2(r.attn_perp + r.mlp_perp,
                                    np.linalg.norm(x[:-1], axis=-1) + r.attn_par + r.mlp_par))
    np.testing.assert_allclose(rebuilt, r.angle, atol=1e-9)
    np.testing.assert_allclose(r.attn_angle, angle(mid, x[:-1]), atol=1e-10)
    np.testing.assert_allclose(r.mlp_angle, angle(x[1:], mid), atol=1e-10)
    # attention that only rescales x_(l-1) pushes nothing sideways
    r2 = rotation_decomposition(x, mid=x[:-1] * 1.5)
    np.testing.assert_allclose(r2.attn_perp, 0.0, atol=1e-10)
    np.testing.assert_allclose(r2.summary["attention alone"].mean, 0.0, atol=1e-6)
    with pytest.raises(InputError, match="resid_mid"):
        rotation_decomposition(fake_residual(x, np.ones((B, P), bool)))


def test_results_record_their_protocol_and_course_control_is_not_tested():
    x = _study_data()
    t = np.full(8, 3)
    res = angle_trajectory(x, t, control="course", bonferroni="bonferroni_states")
    assert set(res.tests) == {"target-before"}
    assert {"target-before"} == set(res.permutation) == set(res.bootstrap)
    proto = res.settings["protocol"]
    assert {"bos", "final_state", "control", "correction", "batch_composition"} <= set(proto)
    assert "m = L+1" in proto["correction"] and "padding included" in proto["control"]
    clean = angle_trajectory(x, t, control="clean")
    assert set(clean.tests) == {"target-before", "target-control"}
    assert "m = L tests" in clean.settings["protocol"]["correction"]
    groups = set(clean.to_frame().group)
    stats_tb = set(clean.to_frame().query("group == 'target-before'").statistic)
    assert {"perm_p", "boot_ci_low", "boot_ci_high", "t"} <= stats_tb and "target" in groups


def test_course_control_needs_every_position():
    x = _study_data(B=4, P=6)
    cap = types.SimpleNamespace(resid=torch.tensor(x[:, :, :2]),
                                mask=torch.ones(4, 2, dtype=torch.bool),
                                positions=torch.tensor([[2, 3]] * 4),
                                attention_mask=torch.ones(4, 6, dtype=torch.bool),
                                str_tokens=None, meta={"mode": "raw"})
    with pytest.raises(InputError, match="positions='all'"):
        angle_trajectory(cap, np.full(4, 1), control="course")
