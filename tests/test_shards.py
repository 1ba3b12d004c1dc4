"""Sharded, resumable runs: plans, commits, resume and fingerprints, merge and status, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensor_helpers import tensors

import tlprobes as tp
from tlprobes._shards.plan import Plan
from tlprobes.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Mary saw her brother.", "She gave her friend a book.", "The fox jumps.",
    "John told her that the store was closed.", "It rained all day.", "A cat sat on the mat.",
    "We went home early.", "He asked her a question.", "The dog ran.", "Birds sing at dawn.",
    "They wrote her a long letter about the trip.",
]


@pytest.fixture(scope="module")
def model():
    return tp.load_model()


class _Count:
    """Counts the model's forward passes (one per batch)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.n += 1

    def close(self):
        self.handle.remove()


def _assert_same(a, b):
    assert list(a) == list(b)
    assert torch.equal(a.inputs.tokens, b.inputs.tokens)
    assert torch.equal(a.inputs.attention_mask, b.inputs.attention_mask)
    assert a.inputs.prompts == b.inputs.prompts
    for name in a:
        ta, tb = tensors(a[name]), tensors(b[name])
        assert ta.keys() == tb.keys() and ta, name
        for k in ta:
            x, y = ta[k], tb[k]
            assert x.shape == y.shape and x.dtype == y.dtype, (name, k)
            if x.is_floating_point():
                torch.testing.assert_close(x, y, rtol=1e-12, atol=0, equal_nan=True,
                                           msg=f"{name}.{k}")
            else:
                assert torch.equal(x, y), (name, k)


def test_plan_boundaries_do_not_depend_on_the_worker_count():
    plan = Plan(n_prompts=103, shard_size=8, batch_size=4)
    ranges = [(s.start, s.stop) for s in plan.shards]
    assert ranges[0] == (0, 8) and ranges[-1] == (96, 103) and len(plan) == 13
    assert all(b - a == 8 for a, b in ranges[:-1])
    for w in (1, 2, 3, 5):
        parts = [plan.assign(w, r) for r in range(w)]
        assert sorted(i for p in parts for i in p) == list(range(13))  # each shard exactly once
        assert parts[0][:2] == ([0, w] if w < 13 else [0])
    with pytest.raises(tp.errors.InputError, match=r"shard_size 6 must be a positive multiple of "
                                            r"batch_size 4 \(valid: 4, 8, 16"):
        Plan(n_prompts=10, shard_size=6, batch_size=4)


@pytest.mark.parametrize("probe", [
    tp.Residual(), tp.Steps(), tp.ResidualMean(), tp.Attention(),
], ids=["Residual", "Steps", "ResidualMean", "Attention"])
def test_k_shards_merged_equal_the_unsharded_run(model, tmp_path, probe):
    whole = tp.run(model, PROMPTS, probe, batch_size=2)
    in_memory = tp.run(model, PROMPTS, probe, batch_size=2, shard_size=4)
    committed = tp.run(model, PROMPTS, probe, batch_size=2, shard_size=4, out=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [f"shard-{i:06d}" for i in range(3)]
    _assert_same(in_memory, whole)
    _assert_same(committed, whole)


def test_a_prompt_iterator_and_pad_to_longest_shard_like_a_list(model, tmp_path):
    whole = tp.run(model, PROMPTS, tp.Residual(), batch_size=2, pad_to="longest")
    res = tp.run(model, (p for p in PROMPTS), tp.Residual(), batch_size=2, pad_to="longest",
                 shard_size=4, out=tmp_path)
    assert res.inputs.tokens.shape == whole.inputs.tokens.shape  # the run's longest, every shard
    _assert_same(res, whole)


def test_a_commit_holds_its_state_rows_and_hashes(model, tmp_path):
    tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2, shard_size=4, out=tmp_path)
    meta = json.loads((tmp_path / "shard-000001" / "shard.json").read_text())
    assert meta["range"] == [4, 8] and meta["attempt"] == 1 and meta["n_prompts"] == 4
    assert set(meta["files"]) == {"state.safetensors", "rows.parquet"}
    assert meta["host"] == socket.gethostname() and meta["timings_s"]["compute"] > 0
    rows = pd.read_parquet(tmp_path / "shard-000001" / "rows.parquet")
    assert rows["prompt_index"].tolist() == [4, 5, 6, 7] and rows["prompt"].tolist() == PROMPTS[4:8]
    assert not list(tmp_path.glob(".shard-*"))  # no temporary folder left behind


def test_resume_computes_only_missing_or_corrupt_shards(model, tmp_path):
    probe = tp.Steps()
    whole = tp.run(model, PROMPTS, probe, batch_size=2)
    tp.run(model, PROMPTS, probe, batch_size=2, shard_size=4, out=tmp_path)
    shutil.rmtree(tmp_path / "shard-000000")                       # a shard never committed
    state = tmp_path / "shard-000002" / "state.safetensors"        # a corrupt one
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    count = _Count(model)
    try:
        res = tp.run(model, PROMPTS, probe, batch_size=2, shard_size=4, out=tmp_path, resume=True)
    finally:
        count.close()
    assert count.n == 2 + 2  # shard 0 (2 batches) and shard 2 (3 prompts: 2 batches), not shard 1
    _assert_same(res, whole)
    assert json.loads((tmp_path / "shard-000002" / "shard.json").read_text())["attempt"] == 2
    assert json.loads((tmp_path / "shard-000001" / "shard.json").read_text())["attempt"] == 1
    assert len(list(tmp_path.glob(".shard-000002.bad-*"))) == 1   # set aside, never merged
    count = _Count(model)
    try:
        tp.run(model, PROMPTS, probe, batch_size=2, shard_size=4, out=tmp_path, resume=True)
    finally:
        count.close()
    assert count.n == 0


def test_a_corrupt_commit_is_never_merged(model, tmp_path):
    tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2, shard_size=4, out=tmp_path)
    from tlprobes._shards.merge import merge_call, read_call

    plan, _, digest = read_call(tmp_path)
    (tmp_path / "shard-000001" / "rows.parquet").write_bytes(b"not parquet")
    with pytest.raises(tp.errors.ResultsError, match=r"shards \[1\] of 3 have no valid commit"):
        merge_call(tmp_path, plan, digest)


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 4}, r"batch_size: 2 -> 4"),
    ({"prompts": PROMPTS[:-1] + ["A different last prompt."]}, r"prompts: \"sha256:"),
    ({"probe": tp.Steps()}, r"probes: "),
])
def test_resume_refuses_a_different_run_naming_what_differs(model, tmp_path, change, message):
    tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2, shard_size=4, out=tmp_path)
    kwargs = {"batch_size": change.get("batch_size", 2), "shard_size": 4, "out": tmp_path,
              "resume": True}
    with pytest.raises(tp.errors.InputError, match=message) as info:
        tp.run(model, change.get("prompts", PROMPTS), change.get("probe", tp.ResidualMean()),
               **kwargs)
    assert "cannot resume" in str(info.value) and isinstance(info.value, ValueError)


def test_a_used_out_folder_needs_resume_and_bad_arguments_are_named(model, tmp_path):
    tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2, shard_size=4, out=tmp_path)
    with pytest.raises(tp.errors.InputError, match="already holds a sharded run; pass resume=True"):
        tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2, shard_size=4, out=tmp_path)
    with pytest.raises(tp.errors.InputError, match=r"unknown engine 'dask'; valid: 'local', 'torchrun'"):
        tp.run(model, PROMPTS, tp.ResidualMean(), out=tmp_path / "x", engine="dask")
    with pytest.raises(tp.errors.InputError, match=r"engine 'torchrun' needs the process to be started "
                                            r"by torchrun"):
        tp.run(model, PROMPTS, tp.ResidualMean(), out=tmp_path / "y", engine="torchrun")
    with pytest.raises(tp.errors.ArgumentError, match="resume=True needs out="):
        tp.run(model, PROMPTS, tp.ResidualMean(), resume=True)


def test_status_and_merge_of_a_run_folder(model, tmp_path, capsys):
    whole = tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2)
    tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2, shard_size=4, out=tmp_path)
    shutil.rmtree(tmp_path / "shard-000001")
    assert cli(["status", str(tmp_path)]) == 0
    assert "2/3 done, 0 running [], 1 missing [1]" in capsys.readouterr().out
    assert cli(["merge", str(tmp_path)]) == 2
    assert "shards [1] of 3 have no valid commit" in capsys.readouterr().err
    tp.run(model, PROMPTS, tp.ResidualMean(), batch_size=2, shard_size=4, out=tmp_path, resume=True)
    assert cli(["merge", str(tmp_path)]) == 0
    from tlprobes._result import Result
    from tlprobes._state import load_state

    merged = Result.from_state_dict(load_state(tmp_path / "merged.safetensors"))
    _assert_same(merged, whole)


# ---------------------------------------------------------------------------------- suites
def _suite(tmp_path: Path, name: str = "path_length", limit: int = 12) -> Path:
    shutil.copytree(REPO / "probes" / "prompts", tmp_path / "prompts", dirs_exist_ok=True)
    text = (REPO / "probes" / f"{name}.toml").read_text()
    text = text.replace('file = "prompts/', f'limit = {limit}\nfile = "prompts/')
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def _same_tables(a: Path, b: Path) -> None:
    ra, rb = tp.load_results(a), tp.load_results(b)
    assert set(ra.tables) == set(rb.tables) and ra.tables
    for name in ra.tables:
        pd.testing.assert_frame_equal(ra.tables[name], rb.tables[name], check_exact=False,
                                      rtol=1e-12, atol=0)
    assert ra.facts == rb.facts


def test_a_sharded_suite_run_equals_the_plain_one_and_merges_again(tmp_path, capsys):
    suite = _suite(tmp_path)
    assert cli(["run", str(suite), "--out", str(tmp_path / "plain"), "--quiet",
                "--batch-size", "2"]) == 0
    assert cli(["run", str(suite), "--out", str(tmp_path / "sharded"), "--quiet",
                "--batch-size", "2", "--shard-size", "4"]) == 0
    _same_tables(tmp_path / "plain", tmp_path / "sharded")
    man = tp.load_results(tmp_path / "sharded").manifest["shards"]
    assert man["engine"] == "local" and man["world_size"] == 1 and man["precision"].startswith(
        "counts exact")
    call = man["calls"][0]
    assert call["n_shards"] == 3 and call["merge_order"] == [0, 1, 2]
    assert [s["range"] for s in call["shards"]] == [[0, 4], [4, 8], [8, 12]]
    assert call["n_tokens"] == sum(s["n_tokens"] for s in call["shards"]) > 0
    work = tmp_path / "sharded.shards"
    assert (work / "call-000" / "run.json").is_file()
    assert cli(["status", str(tmp_path / "sharded")]) == 0
    assert "call-000: 3/3 done" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "sharded")
    again = ["run", str(suite), "--out", str(tmp_path / "sharded"), "--quiet", "--batch-size", "2",
             "--shard-size", "4"]
    assert cli(again) == 2
    assert "holds the shards of an earlier run of this suite; pass --resume" in capsys.readouterr().err
    assert cli(["merge", str(work)]) == 0
    _same_tables(tmp_path / "plain", tmp_path / "sharded")
    stamp = (work / "call-000" / "shard-000000" / "shard.json").stat().st_mtime_ns
    assert cli([*again, "--overwrite"]) == 0  # replaces the old run, its shards too
    assert (work / "call-000" / "shard-000000" / "shard.json").stat().st_mtime_ns != stamp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], n: int, env: dict[str, str] | None = None, timeout: int = 300):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "tlprobes", *args]
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"),
                                                         os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    suite = _suite(tmp)
    assert cli(["run", str(suite), "--out", str(tmp / "plain"), *COMMON]) == 0
    return suite, tmp / "plain"


COMMON = ["--quiet", "--batch-size", "2", "--shard-size", "2"]


def test_torchrun_two_workers_equal_one_process(plain_run, tmp_path):
    suite, plain = plain_run
    done = _torchrun(["run", str(suite), "--out", str(tmp_path / "tr"), *COMMON], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_tables(plain, tmp_path / "tr")
    man = tp.load_results(tmp_path / "tr").manifest["shards"]
    assert man["engine"] == "torchrun" and man["world_size"] == 2
    assert [s["rank"] for s in man["calls"][0]["shards"]] == [0, 1, 0, 1, 0, 1]


def test_a_killed_torchrun_rank_then_resume_on_one_worker_redoes_only_missing_shards(
        plain_run, tmp_path):
    suite, plain = plain_run
    # rank 1 dies after two commits; one worker then redoes only what is missing
    crashed = _torchrun(["run", str(suite), "--out", str(tmp_path / "ft"), *COMMON], 2,
                        env={"TLPROBES_FAULT_EXIT_AFTER_COMMITS": "2", "TLPROBES_FAULT_RANK": "1"})
    assert crashed.returncode != 0 and not (tmp_path / "ft").exists()
    call = tmp_path / "ft.shards" / "call-000"
    before = {p.name: json.loads((p / "shard.json").read_text()) for p in call.glob("shard-*")}
    by_rank1 = sorted(n for n, m in before.items() if m["rank"] == 1)
    assert len(by_rank1) == 2 and len(before) < 6
    assert cli(["run", str(suite), "--out", str(tmp_path / "ft"), *COMMON, "--resume"]) == 0
    after = {p.name: json.loads((p / "shard.json").read_text()) for p in call.glob("shard-*")}
    assert len(after) == 6
    assert all(after[n] == m for n, m in before.items())  # committed shards were not redone
    assert all(m["pid"] == os.getpid() for n, m in after.items() if n not in before)
    _same_tables(plain, tmp_path / "ft")
