"""Analyzers on real captures from a tiny offline model (conftest fixtures): the duck-typed
contract between the core's captures and the analyzers, checked against the core's own numbers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAS_BRIDGE, PROMPTS

import tlprobes as tp
import tlprobes.analysis as ta

pytestmark = pytest.mark.skipif(not HAS_BRIDGE, reason="needs a TransformerBridge (TL 3/4)")


@pytest.mark.parametrize("model_kind", ["bridge"])
def test_analyzers_agree_with_core_captures(model):
    res = tp.run(model, PROMPTS, tp.Residual(), tp.Components(), tp.LogitLens(top_k=3),
                 tp.Steps(), batch_size=2)
    r = res.residual
    # the step lengths from states, from components and from the streaming steps capture agree
    pl = ta.path_length(r)
    dec = ta.decompose_steps(res.components)
    np.testing.assert_allclose(dec.step, pl.steps, rtol=1e-4, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(ta.path_length(res.steps).total, pl.total, rtol=1e-4,
                               equal_nan=True)
    dec_s = ta.decompose_steps(res.steps)
    for k in ("attn_proj", "mlp_proj", "cos_attn_mlp"):
        np.testing.assert_allclose(getattr(dec_s, k), getattr(dec, k), rtol=1e-3, atol=1e-4,
                                   equal_nan=True)
    a, b = ta.AngleAccumulator(), ta.AngleAccumulator()
    a.update(r)
    b.update(res.steps)
    np.testing.assert_allclose(a.compute().summary["all"].mean, b.compute().summary["all"].mean,
                               rtol=1e-4)
    # the array-level lens with the model's ln_final reproduces the core's lens
    tg = res.logit_lens.target_ids
    mine = ta.lens_readout(r, model.W_U.detach(), model.b_U.detach(), ln=model.ln_final, targets=tg)
    ok = r.mask.numpy() & (tg.numpy() >= 0)
    core = res.logit_lens.target_logprob.double().numpy()
    np.testing.assert_allclose(mine.target_logprob[:, ok], core[:, ok], atol=1e-4)
    summ = ta.lens_readout(res.logit_lens).summary["target_logprob"]
    np.testing.assert_allclose(summ.mean, np.nanmean(core[:, ok], axis=1), rtol=1e-6)
    # string targets resolve through positions/str_tokens; mode is recorded
    traj = ta.angle_trajectory(r, " her")
    assert traj.valid["target"].sum() >= 2
    assert traj.settings["mode"] == r.meta.mode
    ss = ta.state_space_trajectories(r, " her")
    assert ss.projections.shape[1] == traj.valid["target"].sum()
    assert ta.drift(r).n.min() > 0 and np.isfinite(ta.anisotropy(r).mean_cosine).all()
