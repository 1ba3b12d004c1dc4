"""The accumulator protocol: ``update`` / ``merge`` / ``compute`` / ``state_dict`` /
``from_state_dict``, and one safetensors file per state (no pickle).

For every accumulator and capture class: the saved state loads back bitwise; merging k pieces in
any order equals the unsharded run (counts exactly, float64 sums within 1e-12 relative); and
``tp.run`` over prompts cut into 3 chunks at batch boundaries, merged, equals one ``tp.run``.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle

import numpy as np
import pytest
import torch

import tlprobes as tp
import tlprobes.analysis as ta
from tlprobes._errors import ArgumentError, InputError, ResultsError
from tlprobes._result import Result
from tlprobes._state import FORMAT, load_state, save_state, states_equal
from tlprobes.analysis._stream import LayerMoments

PROMPTS = [
    "Mary saw her brother at the station.",
    "John gave her a book.",
    "The cat sat on the mat and purred.",
    "She told her mother the news.",
    "A dog.",
    "Her friend met her at noon today.",
]
BATCH = 2
# the synthetic states hold a NaN on purpose (skipped and counted): the analyzers warn about it
pytestmark = pytest.mark.filterwarnings("ignore:.*are NaN.*:RuntimeWarning")


def _probes() -> list[tp.Probe]:
    return [
        tp.Residual(mid=True),
        tp.Attention(),
        tp.Components(),
        tp.LogitLens(top_k=3),
        tp.Activation("blocks.0.mlp.hook_post"),
        tp.Steps(),
        tp.ResidualMean(),
        tp.HeadSteps(keep_tokens=True),
    ]


@pytest.fixture(scope="module")
def shipped():
    return tp.load_model()


@pytest.fixture(scope="module")
def runs(shipped):
    """One run over all prompts, and three runs over chunks cut at batch boundaries."""
    full = tp.run(shipped, PROMPTS, *_probes(), batch_size=BATCH, progress=False)
    chunks = [
        tp.run(shipped, PROMPTS[i : i + BATCH], *_probes(), batch_size=BATCH, progress=False)
        for i in range(0, len(PROMPTS), BATCH)
    ]
    assert len(chunks) == 3
    return full, chunks


def assert_state_close(a, b, path="state"):
    """Equal states: integers, bools and JSON exactly; float tensors within 1e-12 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a.keys(), b)
        for k in a:
            assert_state_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_close(x, y, f"{path}.{i}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point():
            scale = float(a.double().abs().nan_to_num(posinf=0, neginf=0).max()) if a.numel() else 0
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * scale, equal_nan=True,
                                       msg=lambda m: f"{path}: {m}")
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert a == b, (path, a, b)


def _round_trip(state, tmp_path, name="s.safetensors"):
    path = save_state(tmp_path / name, state)
    return load_state(path)


# ------------------------------------------------------------------------ save_state / load_state
def test_save_load_round_trip_is_exact(tmp_path):
    base = torch.randn(4, 6, dtype=torch.float64)
    state = {
        "f64": base,
        "view": base[1],  # shares memory with f64
        "strided": base[:, ::2],  # not contiguous
        "bf16": torch.randn(3, dtype=torch.bfloat16),
        "f16": torch.randn(2, 2, dtype=torch.float16),
        "bool": torch.tensor([True, False]),
        "i64": torch.arange(5),
        "u8": torch.arange(3, dtype=torch.uint8),
        "scalar": torch.tensor(7),
        "empty": torch.zeros(0, 3),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
        "nested": {"a.b": {"c": [torch.ones(2), (1, 2.5, None, "x", True)]}, "$odd": 1},
        "json": {"n": 3, "x": 0.1, "big": 2**62, "nan": float("nan"), "none": None, "s": "é\n"},
        "tuple": (0, (1, 2), []),
        "list": [1, [2, [3]]],
        "empty_dict": {},
    }
    back = _round_trip(state, tmp_path)
    assert states_equal(state, back)
    assert back["tuple"] == (0, (1, 2), []) and isinstance(back["tuple"][1], tuple)
    assert back["nested"]["a.b"]["c"][1] == (1, 2.5, None, "x", True)
    assert back["json"]["big"] == 2**62 and isinstance(back["json"]["big"], int)
    assert back["bf16"].dtype == torch.bfloat16 and back["scalar"].shape == ()
    assert torch.equal(back["nan"].view(torch.int32), state["nan"].view(torch.int32))  # -0.0 too
    # the comparison is strict: a changed bit, dtype or type is seen
    assert not states_equal(state, {**back, "f64": back["f64"].clone().fill_(0)})
    assert not states_equal(state, {**back, "i64": back["i64"].int()})
    assert not states_equal(state, {**back, "tuple": [0, (1, 2), []]})


def test_the_file_is_plain_safetensors_without_pickle(tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = {"moments": {"all": torch.arange(6.0, dtype=torch.float64).reshape(2, 3)},
             "settings": {"mode": "raw"}}
    path = save_state(tmp_path / "acc.safetensors", state)
    # the safetensors layout: 8-byte little-endian header length, a JSON header, raw bytes
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    assert set(header) == {"__metadata__", "moments.all"}
    assert header["moments.all"]["dtype"] == "F64" and header["moments.all"]["shape"] == [2, 3]
    meta = json.loads(header["__metadata__"][FORMAT])
    assert meta["state"]["settings"] == {"mode": "raw"}
    with safe_open(path, "pt") as f:
        assert list(f.keys()) == ["moments.all"]
    assert torch.equal(load_file(path)["moments.all"], state["moments"]["all"])
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())

    # nothing is unpickled while loading
    def refuse(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert states_equal(load_state(path), state)


def _craft(path, metadata, tensors=None):
    from safetensors.torch import save_file

    save_file(tensors or {"x": torch.zeros(1)}, path, metadata=metadata)
    return path


def test_crafted_or_foreign_files_are_refused(tmp_path):
    ref = {"$tensor": "x"}
    bad = {"version": 1, "state": {"x": ref, "evil": {"$pickle": "gASVAAAA"}}}
    path = _craft(tmp_path / "bad.safetensors", {FORMAT: json.dumps(bad)})
    with pytest.raises(ResultsError, match=r"unknown value type \['\$pickle'\]"):
        load_state(path)
    mixed = {"version": 1, "state": {"x": {"$tensor": "x", "more": 1}}}
    with pytest.raises(ResultsError, match="unknown value type"):
        load_state(_craft(tmp_path / "mixed.safetensors", {FORMAT: json.dumps(mixed)}))
    missing = {"version": 1, "state": {"y": {"$tensor": "y"}}}
    with pytest.raises(ResultsError, match="'y' is named in the metadata but missing"):
        load_state(_craft(tmp_path / "missing.safetensors", {FORMAT: json.dumps(missing)}))
    extra = {"version": 1, "state": {}}
    with pytest.raises(ResultsError, match=r"tensors \['x'\] are in the file but not"):
        load_state(_craft(tmp_path / "extra.safetensors", {FORMAT: json.dumps(extra)}))
    with pytest.raises(ResultsError, match="without a 'tlprobes.state' metadata entry"):
        load_state(_craft(tmp_path / "plain.safetensors", {"other": "1"}))
    with pytest.raises(ResultsError, match="unsupported state format 9"):
        load_state(_craft(tmp_path / "v9.safetensors",
                          {FORMAT: json.dumps({"version": 9, "state": {"x": ref}})}))
    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ResultsError, match="is not a safetensors file"):
        load_state(tmp_path / "pickle.safetensors")
    with pytest.raises(ResultsError, match="no state file"):
        load_state(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    "state, match",
    [
        ({"x": np.zeros(3)}, r"'x' has type ndarray; valid: torch.Tensor"),
        ({"a": {"b": [1, object()]}}, r"'a.b.1' has type object"),
        ({"a": {1: 2}}, r"state key 1 under 'a' is a int; dict keys must be str"),
        ({"c": torch.zeros(2, dtype=torch.complex64)}, r"'c' is a tensor of dtype torch.complex64"),
        ({"s": {1, 2}}, r"'s' has type set"),
    ],
)
def test_unsupported_values_are_refused_with_key_and_type(tmp_path, state, match):
    with pytest.raises(TypeError, match=match) as err:
        save_state(tmp_path / "x.safetensors", state)
    assert isinstance(err.value, ArgumentError)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_write_is_atomic(tmp_path, monkeypatch):
    path = save_state(tmp_path / "s.safetensors", {"v": torch.ones(3)})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        save_state(path, {"v": torch.zeros(3)})
    assert path.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temporary file left


# ------------------------------------------------------------------------ analysis accumulators
def _states(seed=0, shape=(4, 9, 6, 8)):
    x = np.random.default_rng(seed).normal(size=shape)
    x[1, 2, 3] = np.nan  # a non-finite state is skipped and counted
    mask = np.ones(shape[1:3], bool)
    mask[4, 4:] = False  # padding
    return x, mask


ACCUMULATORS = {
    "AngleAccumulator": lambda: ta.AngleAccumulator(),
    "PathAccumulator": lambda: ta.PathAccumulator(),
    "DriftAccumulator": lambda: ta.DriftAccumulator(),
    "AnisotropyAccumulator": lambda: ta.AnisotropyAccumulator(exclude_first=False),
}


def _frame_close(a, b, exact_counts=True):
    fa, fb = a.to_frame(), b.to_frame()
    assert list(fa.columns) == list(fb.columns) and len(fa) == len(fb)
    for col in fa.columns:
        x, y = fa[col].to_numpy(), fb[col].to_numpy()
        if x.dtype.kind in "fc":
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14, equal_nan=True, err_msg=col)
        else:
            np.testing.assert_array_equal(x, y, err_msg=col)


@pytest.mark.parametrize("name", list(ACCUMULATORS))
def test_accumulator_round_trip_and_merge_order(name, tmp_path):
    make = ACCUMULATORS[name]
    x, mask = _states()
    whole = make()
    whole.update(x, mask)
    cuts = [(0, 2), (2, 5), (5, 9)]
    pieces = []
    for a, b in cuts:
        acc = make()
        acc.update(x[:, a:b], mask[a:b])
        pieces.append(acc)
    # exact round trip through one safetensors file
    for i, acc in enumerate(pieces):
        state = acc.state_dict()
        back = type(acc).from_state_dict(_round_trip(state, tmp_path, f"{name}{i}.safetensors"))
        assert type(back) is type(acc)
        assert states_equal(back.state_dict(), state)
        _frame_close(back.compute(), acc.compute())
    # merging in any order equals the unsharded run; counts exactly
    for order in itertools.permutations(range(3)):
        loaded = [type(p).from_state_dict(p.state_dict()) for p in pieces]  # pieces stay unchanged
        merged = loaded[order[0]]
        for i in order[1:]:
            merged = merged.merge(loaded[i])
        assert_state_close(merged.state_dict(), whole.state_dict())
        _frame_close(merged.compute(), whole.compute())
    # from_state_dict refuses another kind's state
    other = "DriftAccumulator" if name != "DriftAccumulator" else "AngleAccumulator"
    with pytest.raises(ResultsError, match=f"not a {name} state: its 'kind' is '{other}'"):
        type(whole).from_state_dict(ACCUMULATORS[other]().state_dict())


def test_layer_moments_update_merge_state():
    a, b, whole = LayerMoments("v"), LayerMoments("v"), LayerMoments("v")
    vals = np.arange(12.0).reshape(2, 6)
    ok = np.array([True, True, False, True, True, True])
    a.update(vals[:, :3], ok[:3])
    b.update(vals[:, 3:], ok[3:], group="all")
    whole.update(vals, ok)
    assert not hasattr(LayerMoments, "add")  # one verb for every accumulator: update
    back = LayerMoments.from_state_dict(a.state_dict())
    merged = back.merge(b)
    assert states_equal(merged.state_dict(), whole.state_dict())
    assert merged.compute().summary["all"].n.tolist() == [5, 5]
    assert merged.compute().summary["all"].mean.tolist() == [(0 + 1 + 3 + 4 + 5) / 5,
                                                        (6 + 7 + 9 + 10 + 11) / 5]


def test_accumulator_state_before_any_batch_round_trips(tmp_path):
    for make in ACCUMULATORS.values():
        acc = make()
        back = type(acc).from_state_dict(_round_trip(acc.state_dict(), tmp_path))
        with pytest.raises(InputError, match="nothing to compute"):
            back.compute()
        x, mask = _states()
        back.merge(_fed(make, x, mask))
        _frame_close(back.compute(), _fed(make, x, mask).compute())


def _fed(make, x, mask):
    acc = make()
    acc.update(x, mask)
    return acc


# ------------------------------------------------------------------------ captures and results
CAPTURES = ("residual", "attention", "components", "logit_lens", "activation", "steps",
            "residual_mean", "head_steps")


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_round_trip_is_exact(runs, name, tmp_path):
    full, _ = runs
    cap = full[name]
    state = cap.state_dict()
    back = type(cap).from_state_dict(_round_trip(state, tmp_path))
    assert type(back) is type(cap)
    assert states_equal(back.state_dict(), state)
    for key, t in cap.tensors().items():
        got = back.tensors()[key]
        assert t.dtype == got.dtype and t.shape == got.shape
        assert states_equal(t, got), key
    if hasattr(cap, "inputs") and cap.inputs is not None:
        assert back.inputs.str_tokens == cap.inputs.str_tokens  # strings without the tokenizer
        assert back.inputs.prompts == cap.inputs.prompts
    if name == "logit_lens":
        assert back.top_strings(layer=-1) == cap.top_strings(layer=-1)
    if name == "residual":
        assert back.protocol == cap.protocol and back.final_state == cap.final_state


@pytest.mark.parametrize("name", CAPTURES)
def test_chunked_runs_merge_to_the_one_run(runs, name):
    """Three runs over chunks (cut at batch boundaries), merged capture by capture, equal one run
    over all prompts: dense captures bitwise (the same padding), sums within 1e-12."""
    full, chunks = runs
    merged = chunks[0][name].merge(chunks[1][name]).merge(chunks[2][name])
    assert_state_close(merged.state_dict(), full[name].state_dict())
    other_way = chunks[0][name].merge(chunks[1][name].merge(chunks[2][name]))  # associative
    assert_state_close(other_way.state_dict(), full[name].state_dict())
    if name in ("residual", "attention", "components", "logit_lens", "activation", "steps"):
        assert states_equal(merged.state_dict(), full[name].state_dict())
    # the pieces themselves are unchanged by merging
    assert chunks[0][name].state_dict().keys() == merged.state_dict().keys()


def test_result_merge_and_round_trip(runs, tmp_path):
    full, chunks = runs
    merged = chunks[0].merge(chunks[1]).merge(chunks[2])
    assert isinstance(merged, Result) and list(merged) == list(full)
    assert_state_close(merged.state_dict(), full.state_dict())
    assert merged.inputs.str_tokens == full.inputs.str_tokens
    assert merged.meta == full.meta and merged.settings == full.settings
    for name in ("residual", "attention", "steps", "head_steps"):  # one copy of the inputs
        assert merged[name].inputs is merged.inputs
    # a shard's result saved and loaded, then merged, is the same
    loaded = [Result.from_state_dict(_round_trip(c.state_dict(), tmp_path, f"r{i}.safetensors"))
              for i, c in enumerate(chunks)]
    assert states_equal(loaded[0].state_dict(), chunks[0].state_dict())
    assert loaded[0].head_steps.inputs is loaded[0].inputs is loaded[0].logit_lens.inputs
    again = loaded[0].merge(loaded[1]).merge(loaded[2])
    assert_state_close(again.state_dict(), full.state_dict())
    assert again.logit_lens.top_strings(0) == full.logit_lens.top_strings(0)


def test_streamed_captures_merge_in_any_order(runs):
    _, chunks = runs
    for name in ("residual_mean", "head_steps"):
        ref = None
        for order in itertools.permutations(range(3)):
            m = chunks[order[0]][name].merge(chunks[order[1]][name]).merge(chunks[order[2]][name])
            if name == "residual_mean":
                state = m.state_dict()
                assert int(m.count) == int(sum(int(c[name].count) for c in chunks))
            else:
                state = {"moments": m.moments}
                assert torch.equal(m.moments["target"]["n"],
                                   sum(c[name].moments["target"]["n"] for c in chunks))
            if ref is None:
                ref = state
            assert_state_close(state, ref)


def test_merge_refuses_different_models_settings_and_kinds(shipped, runs):
    import dataclasses

    full, chunks = runs
    other_dtype = tp.run(shipped, PROMPTS[:2], *_probes(), batch_size=BATCH, progress=False,
                         dtype=torch.float64)
    with pytest.raises(InputError, match="setting 'capture_dtype' differs"):
        chunks[0].merge(other_dtype)
    renamed = Result(dict(chunks[1]), chunks[1].inputs,
                     dataclasses.replace(chunks[1].meta, model_name="other"), chunks[1].settings)
    with pytest.raises(InputError, match="meta key 'model_name' differs"):
        chunks[0].merge(renamed)
    moved = Result(dict(chunks[1]), chunks[1].inputs,
                   dataclasses.replace(chunks[1].meta, device="cuda:1"), chunks[1].settings)
    assert len(chunks[0].merge(moved).inputs.tokens) == 4  # each shard's device may differ
    with pytest.raises(InputError, match="cannot merge AttentionCapture into ResidualCapture"):
        chunks[0].residual.merge(chunks[1].attention)
    few = tp.run(shipped, PROMPTS[:2], tp.Components(layers=[0]), progress=False).components
    with pytest.raises(InputError, match=r"layers \(0,\) differs from \(0, 1, 2, 3\)"):
        chunks[0].components.merge(few)
    lens = tp.run(shipped, PROMPTS[:2], tp.LogitLens(top_k=5), progress=False).logit_lens
    with pytest.raises(InputError, match="field 'top_ids' has shape"):
        chunks[0].logit_lens.merge(lens)
    with pytest.raises(ResultsError, match="not a ResidualCapture state"):
        type(full.residual).from_state_dict(full.steps.state_dict())


def test_a_saved_result_loads_in_a_fresh_process(runs, tmp_path):
    """The capture classes are found by name without importing them first (no pickle)."""
    import subprocess
    import sys

    full, _ = runs
    path = save_state(tmp_path / "result.safetensors", full.state_dict())
    code = (
        "import sys; from tlprobes._result import Result; from tlprobes._state import load_state;"
        "r = Result.from_state_dict(load_state(sys.argv[1]));"
        "print(type(r.head_steps).__name__, tuple(r.residual.resid.shape), r.inputs.str_tokens[4])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env={**os.environ}, check=True).stdout.strip()
    shape = tuple(full.residual.resid.shape)
    assert out == f"HeadStepsCapture {shape} {full.inputs.str_tokens[4]}"
