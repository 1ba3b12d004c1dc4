"""The streaming path-length suite (``path_length_stream``, issue #15): per-token scalars only
(``tp.Steps``), the dense suite's per-layer numbers, and sharded runs equal to the plain one.

The shipped model and the shipped prompts (``probes/prompts/general.txt``, 24 prompts); a few
seconds in all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tlprobes as tp
from tlprobes.cli import main as cli
from tlprobes.suites import load_results, load_suite, run_suite

REPO = Path(__file__).resolve().parents[1]
STREAM, DENSE = REPO / "probes" / "path_length_stream.toml", REPO / "probes" / "path_length.toml"
#: per-layer groups both suites compute; straightness (needs x_L - x_0) and the course drifts
#: (need attn_out/mlp_out vectors) are NaN in the streaming run
PATH_GROUPS = ["step", "cumulative", "relative_step", "total"]
#: group -> relative tolerance. The dense run splits the step attn_out + mlp_out (summed in
#: float64); tp.Steps splits the model's own step x_(l+1) - x_l, whose float32 additions
#: (resid_mid, resid_post) round: the two steps differ by ~1e-8 relative, so the projections on
#: them do too, and ``cross`` (step**2 - |attn|**2 - |mlp|**2, a difference of large numbers) by
#: ~1e-5. The norms and the cosine of attn_out and mlp_out are the same vectors in both runs.
DEC_GROUPS = {"attn_norm": 1e-9, "mlp_norm": 1e-9, "cos_attn_mlp": 1e-9, "step": 1e-7,
              "attn_proj": 1e-7, "mlp_proj": 1e-7, "cross": 1e-4}
STATS = ["n", "mean", "sd", "sem", "ci_low", "ci_high", "median", "n_nan"]


@pytest.fixture(scope="module")
def model():
    return tp.load_model()


@pytest.fixture(scope="module")
def runs(model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    run_suite(STREAM, out=tmp / "stream", model=model, quiet=True, batch_size=4)
    run_suite(DENSE, out=tmp / "dense", model=model, quiet=True, batch_size=4)
    return tmp, load_results(tmp / "stream"), load_results(tmp / "dense")


def _select(df: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    sel = df[df["group"].isin(groups) & df["statistic"].isin(STATS)]
    return sel.sort_values(["group", "statistic", "layer"]).reset_index(drop=True)


def _same(a: pd.DataFrame, b: pd.DataFrame, rtol: float, what: str) -> None:
    assert len(a) == len(b) > 0, what
    pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"), obj=what)
    counts = a["statistic"].isin(["n", "n_nan"])
    assert (a["value"][counts] == b["value"][counts]).all(), what  # counts: exact
    np.testing.assert_allclose(a["value"][~counts], b["value"][~counts], rtol=rtol, atol=1e-12,
                               err_msg=what)


def test_the_streaming_suite_equals_the_dense_suite_per_layer(runs):
    _, stream, dense = runs
    assert {"path_length", "decomposition", "angles", "summary"} <= set(stream.tables)
    a, b = _select(stream.tables["path_length"], PATH_GROUPS), _select(
        dense.tables["path_length"], PATH_GROUPS)
    assert set(a["group"]) == set(PATH_GROUPS)
    _same(a, b, 1e-9, "path_length")  # steps, cumulative, relative steps, total path per token
    for group, rtol in DEC_GROUPS.items():
        _same(_select(stream.tables["decomposition"], [group]),
              _select(dense.tables["decomposition"], [group]), rtol, f"decomposition {group}")
    # the streaming decomposition's step is the residual step: path_length's (block b = layer b+1)
    st_dec = _select(stream.tables["decomposition"], ["step"])
    st_path = _select(stream.tables["path_length"], ["step"])
    np.testing.assert_allclose(st_dec["value"], st_path["value"], rtol=1e-12, atol=0)
    assert (st_dec["layer"] + 1).tolist() == st_path["layer"].tolist()
    assert stream.facts["n_tokens"] == dense.facts["n_tokens"] > 0
    assert stream.facts["str_tokens"] == dense.facts["str_tokens"]


def test_angles_and_the_summary_table(runs, model):
    _, stream, _ = runs
    from tlprobes.analysis import AngleAccumulator

    prompts = load_suite(STREAM).prompts
    acc = AngleAccumulator(exclude_first=True)
    acc.update(tp.run(model, prompts, tp.Residual(), batch_size=4).residual)  # from the vectors
    want = acc.compute().summary["all"]
    got = stream.tables["angles"]
    for stat in ("n", "mean", "sd"):
        vals = got[got["statistic"] == stat].sort_values("layer")["value"].to_numpy(float)
        np.testing.assert_allclose(vals, getattr(want, stat), rtol=1e-9, atol=1e-9)
    summ = stream.tables["summary"]
    assert summ["block"].tolist() == list(range(model.cfg.n_layers))
    # (attn_out + mlp_out) projected on x_(l+1) - x_l: 1 up to the model's float32 residual adds
    np.testing.assert_allclose(summ["attn_share"] + summ["mlp_share"], 1.0, rtol=1e-7)
    assert (summ["step_mean"] > 0).all() and (summ["angle_mean"] > 0).all()


def test_the_report_has_the_streaming_sections(runs):
    tmp, _, _ = runs
    html = (tmp / "stream" / "report.html").read_text(encoding="utf-8")
    assert "Rotation between consecutive states" in html and "Streaming run (tp.Steps)" in html
    assert "Path length and the next token" not in html


def test_three_shards_over_a_dataset_equal_the_unsharded_run(runs, tmp_path):
    """`tlprobes run path_length_stream --dataset X.jsonl --shard-size 8` (24 prompts: 3 shards)."""
    _, stream, _ = runs
    prompts = load_suite(STREAM).prompts
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": p}) + "\n" for i, p in enumerate(prompts)))
    out = tmp_path / "sharded"
    assert cli(["run", str(STREAM), "--out", str(out), "--quiet", "--batch-size", "4",
                "--shard-size", "8", "--dataset", str(data), "--column", "text"]) == 0
    got = load_results(out)
    assert set(got.tables) == set(stream.tables)
    for name in stream.tables:
        pd.testing.assert_frame_equal(got.tables[name], stream.tables[name], check_exact=False,
                                      rtol=1e-12, atol=0, obj=name)
    assert got.facts == stream.facts
    call = got.manifest["shards"]["calls"][0]
    assert call["n_shards"] == 3 and [s["range"] for s in call["shards"]] == [[0, 8], [8, 16],
                                                                              [16, 24]]
