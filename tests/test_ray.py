"""The Ray engine: actors run whole shards, equal the local run, and survive a killed actor (issue #15).

The runs start a local Ray instance (``num_cpus=2``, no dashboard) and are marked slow (each actor
imports torch and loads the shipped model); they are skipped where Ray is not installed. The option
checks at the end run without Ray started.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensor_helpers import tensors

import tlprobes as tp
from tlprobes._errors import InputError, MissingExtraError
from tlprobes.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"Prompt {i}: Mary saw her {w} and the dog ran." for i, w in
           enumerate(["cat", "brother", "book", "red cup", "friend", "garden", "letter", "store"] * 3)]
BATCH, SHARD = 4, 8  # 24 prompts: 3 shards of 2 batches


def _probes():
    return [tp.ResidualMean(), tp.Residual(positions="last"), tp.LogitLens(top_k=3)]


def _assert_same(a, b):
    assert list(a) == list(b)
    assert torch.equal(a.inputs.tokens, b.inputs.tokens)
    for name in a:
        ta, tb = tensors(a[name]), tensors(b[name])
        assert ta.keys() == tb.keys() and ta, name
        for k in ta:
            x, y = ta[k], tb[k]
            assert x.shape == y.shape and x.dtype == y.dtype, (name, k)
            if x.is_floating_point():
                torch.testing.assert_close(x, y, rtol=1e-12, atol=0, equal_nan=True, msg=f"{name}.{k}")
            else:
                assert torch.equal(x, y), (name, k)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return tp.load_model()


@pytest.fixture(scope="module")
def local_run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    return tp.run(model, PROMPTS, *_probes(), batch_size=BATCH, shard_size=SHARD, out=out), out


def _commits(call: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "shard.json").read_text()) for p in sorted(call.glob("shard-*"))}


def _starts(call: Path, name: str) -> int:
    path = call / ".attempts" / name
    return sum(json.loads(ln).get("event") == "start" for ln in path.read_text().splitlines())


@pytest.mark.slow
def test_ray_run_equals_the_local_run(ray_local, model, local_run, tmp_path):
    from tlprobes._datasets import read_prompts
    from tlprobes._shards.ray_engine import RayEngine

    want, _ = local_run
    data = tmp_path / "prompts.jsonl"  # the actors read their shards' rows from the file
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    engine = RayEngine(replicas=2, model="default")
    got = tp.run(model, read_prompts(data), *_probes(), batch_size=BATCH, shard_size=SHARD,
                 out=tmp_path / "ray", engine=engine)
    _assert_same(want, got)
    assert got.inputs.prompts == PROMPTS
    commits = _commits(tmp_path / "ray")
    assert sorted(commits) == ["shard-000000", "shard-000001", "shard-000002"]
    assert len({c["pid"] for c in commits.values()}) == 2  # both replicas ran shards
    info = engine.info()
    assert info["engine"] == "ray" and info["replicas"] == 2 and info["actor_restarts"] == 0
    assert info["device_maps"] == ["cpu", "cpu"]
    assert sorted(i for shards in info["assignment"].values() for i in shards) == [0, 1, 2]


@pytest.mark.slow
def test_a_killed_actor_is_replaced_and_only_its_shard_redone(ray_local, model, local_run,
                                                               tmp_path, monkeypatch):
    from tlprobes._shards.ray_engine import RayEngine

    want, _ = local_run
    monkeypatch.setenv("TLPROBES_FAULT_RAY_KILL_SHARD", "1")  # the actor starting shard 1 dies
    engine = RayEngine(replicas=2, model="default")
    out = tmp_path / "ray"
    got = tp.run(model, PROMPTS, *_probes(), batch_size=BATCH, shard_size=SHARD, out=out,
                 engine=engine)
    _assert_same(want, got)
    assert (out / ".ray-fault-fired").exists()  # the fault did fire
    assert engine.info()["actor_restarts"] == 1
    commits = _commits(out)
    assert sorted(commits) == ["shard-000000", "shard-000001", "shard-000002"]  # each once
    assert [c["attempt"] for c in commits.values()] == [1, 2, 1]  # only shard 1 was redone
    assert [_starts(out, n) for n in commits] == [1, 2, 1]
    assert not list(out.glob(".shard-*"))  # no half-written commit left behind


@pytest.mark.slow
def test_cli_suite_with_engine_ray_equals_the_local_suite_run(ray_local, tmp_path):
    """`tlprobes run SUITE --engine ray --replicas 2`: actors load the suite's model by name."""
    common = ["--quiet", "--batch-size", "2", "--shard-size", "4", "--limit", "8"]
    assert cli(["run", "path_length", "--out", str(tmp_path / "local"), *common]) == 0
    assert cli(["run", "path_length", "--out", str(tmp_path / "ray"), *common,
                "--engine", "ray", "--replicas", "2"]) == 0
    ra, rb = tp.load_results(tmp_path / "local"), tp.load_results(tmp_path / "ray")
    assert set(ra.tables) == set(rb.tables) and ra.tables
    for name in ra.tables:
        pd.testing.assert_frame_equal(ra.tables[name], rb.tables[name], check_exact=False,
                                      rtol=1e-12, atol=0)
    man = rb.manifest["shards"]
    assert man["engine"] == "ray" and man["replicas"] == 2
    assert man["version"].startswith("tlprobes") and "ray 2." in man["version"]


@pytest.mark.slow
def test_more_replicas_than_the_cluster_holds_run_with_fewer(ray_local, model, local_run, tmp_path):
    """4 replicas asked on a 2-CPU cluster: 2 start (the others could never be scheduled)."""
    from tlprobes._shards.ray_engine import RayEngine

    want, _ = local_run
    engine = RayEngine(replicas=4, model="default")
    with pytest.warns(UserWarning, match="holds 2 of the 4 replicas"):
        got = tp.run(model, PROMPTS, *_probes(), batch_size=BATCH, shard_size=SHARD,
                     out=tmp_path / "ray", engine=engine)
    _assert_same(want, got)
    assert len(engine.info()["replica_info"]) == 2
    with pytest.raises(InputError, match=r"needs 1 CPU\(s\) and 64 GPU\(s\), but the Ray cluster "
                                         r"has 2 CPU\(s\) and \d+ GPU\(s\)"):
        tp.run(model, PROMPTS, *_probes(), batch_size=BATCH, shard_size=SHARD,
               out=tmp_path / "gpu", engine=RayEngine(replicas=1, gpus_per_replica=64,
                                                      model="default"))


def test_ray_engine_options_are_checked(monkeypatch):
    pytest.importorskip("ray")
    from tlprobes._shards.ray_engine import RayEngine

    with pytest.raises(InputError, match=r"replicas=0 is not valid"):
        RayEngine(replicas=0)
    with pytest.raises(InputError, match=r"gpus_per_replica=-1"):
        RayEngine(gpus_per_replica=-1)
    with pytest.raises(InputError, match=r"no option 'replica'.*'replicas'"):
        RayEngine(replica=2)
    with pytest.raises(InputError, match=r"model=.*must be a model name"):
        RayEngine(model=object())
    assert RayEngine(replicas=3, gpus_per_replica=1).info()["gpus_per_replica"] == 1


def test_without_ray_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    from tlprobes._shards.ray_engine import RayEngine

    with pytest.raises(MissingExtraError, match=r"pip install 'tlprobes\[ray\]'"):
        RayEngine(replicas=2)
