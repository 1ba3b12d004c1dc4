"""Dataset-scale acceptance run (issue #15): one suite over N prompts in one process, with torchrun
(a rank killed, then resumed on one worker) and with Ray (an actor killed mid-shard), all merged to
the same numbers.

    python bench/scale_out.py                        # 100,000 prompts, stages a, t, b, c
    python bench/scale_out.py --prompts 5000         # estimate first (prints a 100k projection)
    python bench/scale_out.py --quick                # 512 prompts, a smoke test of the script
    python bench/scale_out.py --stages a,c --keep --work /tmp/so   # some stages; keep the runs

What runs, each stage a fresh ``python -m tlprobes run path_length_stream`` (the streaming paths
study: one ``tp.Steps()`` probe, per-token scalars only) on the shipped default model, over the same
``--dataset prompts.jsonl --column text``, batch ``--batch-size``, every worker with 1 torch thread
(``OMP_NUM_THREADS=1``; Ray sets each actor's threads to its 1 CPU):

* **a**  one local process, no shards: the reference.
* **t**  ``torchrun --nproc-per-node 2`` with ``--shard-size S``, nothing killed: the two-worker
  throughput on this machine.
* **b**  ``torchrun --nproc-per-node 2`` with ``--shard-size S``; rank 1 exits after its 2nd commit
  (``TLPROBES_FAULT_EXIT_AFTER_COMMITS=2 TLPROBES_FAULT_RANK=1``) and torchrun stops rank 0; then
  ``--resume`` with one worker (local engine) computes only the shards without a commit. The script
  checks that the crashed run left no run directory, that no committed shard was redone, and that
  the new commits carry the resuming process's pid.
* **c**  ``--engine ray --replicas 2 --shard-size S``; the script watches the attempt log of shard
  ``--kill-shard`` (default: the middle one), waits until the actor is half-way through it (half
  the median shard compute time of stage b) and SIGKILLs that actor's process (by the pid in the
  attempt log). The engine replaces the actor and redoes only that shard: the script checks that
  the shard has no commit at the kill, then attempt 2, every other shard attempt 1, and
  ``actor_restarts == 1``. (``--ray-kill env`` uses the engine's own fault injection instead:
  ``TLPROBES_FAULT_RAY_KILL_SHARD``, a crash at the shard's start.)

Every table of t, b and c is compared with a: counts (``n``, ``n_nan``, ``*_n``) exactly, every
other value within 1e-12 relative (NaN where a has NaN); the facts (tokens of the shown
prompts, counts) must be equal. Wall time is the whole command (Python start, model load, reading
the dataset, tokenising, the forward passes, commits, merge, analysis and report); tokens/s is the
dataset's tokens (padding not counted) over that wall time. Peak RSS is the largest waited-for
process of the command (for Ray: the driver; the actors are children of Ray's raylet and are not
counted).

The prompts come from the shipped grammar the default models were trained on
(``tlprobes.models.training.corpus.generate_sentence(seed=f"scale-out/{i}")``, one sentence per
prompt): deterministic per index, so the first 5,000 prompts of the 100,000 are the 5,000-prompt
run's. Results go to ``bench/results/scale-out-<YYYYMMDD>[-N].json`` (``--json`` to choose).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITE = "path_length_stream"
COUNT_STATS = {"n", "n_nan"}
if (ROOT / "src" / "tlprobes").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


# ------------------------------------------------------------------------------------- prompts
def write_prompts(path: Path, n: int) -> dict[str, Any]:
    """``n`` grammar sentences as JSONL rows ``{"id": i, "text": ...}``."""
    from tlprobes.models.training.corpus import generate_sentence

    t0 = time.perf_counter()
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "text": generate_sentence(f"scale-out/{i}").text}) + "\n")
    return {"path": str(path), "n": n, "bytes": path.stat().st_size,
            "generate_s": round(time.perf_counter() - t0, 2),
            "source": "tlprobes.models.training.corpus.generate_sentence(seed=f'scale-out/{i}')"}


# ------------------------------------------------------------------------------------- running
def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_DEDUP_LOGS": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for k in ("TLPROBES_FAULT_EXIT_AFTER_COMMITS", "TLPROBES_FAULT_RANK",
              "TLPROBES_FAULT_RAY_KILL_SHARD"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _suite_args(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    return ["run", SUITE, "--dataset", str(data), "--column", "text", "--out", str(out), "--quiet",
            "--batch-size", str(args.batch_size)]


def _launch(cmd: list[str], env: dict[str, str], log: Path, watch: Any = None) -> dict[str, Any]:
    """Run ``cmd``; returns rc, wall seconds and the peak RSS (MiB) of its largest waited process.
    ``watch(proc)`` is called every 50 ms while it runs (the Ray stage kills an actor from it)."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if watch is not None:
                watch(proc)
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": round(wall, 3),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "log": str(log)}


def _check(ok: bool, what: str, log: Path | None = None) -> None:
    if not ok:
        tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
        raise SystemExit(f"scale_out: {what}\n{tail}")


def _commits(call: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads((p / "shard.json").read_text())
            for p in sorted(call.glob("shard-*")) if (p / "shard.json").exists()}


def _starts(call: Path, name: str) -> list[dict[str, Any]]:
    path = call / ".attempts" / name
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "start":
            out.append(e)
    return out


def _manifest(out: Path) -> dict[str, Any]:
    import tlprobes as tp

    return tp.load_results(out).manifest


def stage_a(args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    out = work / "a-local"
    r = _launch([sys.executable, "-m", "tlprobes", *_suite_args(args, data, out)], _env(),
                work / "a.log")
    _check(r["rc"] == 0, "stage a (one local process) failed", work / "a.log")
    m = _manifest(out)
    r.update({"what": "one local process, no shards", "run_dir": str(out),
              "timings_s": m.get("timings_s")})
    return r


def _torchrun(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    suite = _suite_args(args, data, out) + ["--shard-size", str(args.shard_size)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1",
            "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "tlprobes", *suite]


def stage_t(args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    out = work / "t-torchrun"
    r = _launch(_torchrun(args, data, out), _env(), work / "t.log")
    _check(r["rc"] == 0, "stage t (torchrun, 2 workers) failed", work / "t.log")
    m = _manifest(out)["shards"]
    ranks = [s["rank"] for s in m["calls"][0]["shards"]]
    return {**r, "what": "torchrun --nproc-per-node 2, nothing killed", "run_dir": str(out),
            "n_shards": len(ranks), "shards_by_rank": {str(k): ranks.count(k) for k in (0, 1)},
            "n_tokens": m["calls"][0]["n_tokens"]}


def stage_b(args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    out = work / "b-torchrun"
    call = work / "b-torchrun.shards" / "call-000"
    suite = _suite_args(args, data, out) + ["--shard-size", str(args.shard_size)]
    cmd = _torchrun(args, data, out)
    fault = {"TLPROBES_FAULT_EXIT_AFTER_COMMITS": str(args.kill_after),
             "TLPROBES_FAULT_RANK": "1"}
    crash = _launch(cmd, _env(fault), work / "b-torchrun.log")
    _check(crash["rc"] != 0, "stage b: the torchrun run with a killed rank 1 did not fail",
           work / "b-torchrun.log")
    _check(not out.exists(), "stage b: the crashed torchrun run left a run directory")
    before = _commits(call)
    by_rank = {r: sorted(n for n, c in before.items() if c["rank"] == r) for r in (0, 1)}
    _check(len(by_rank[1]) == args.kill_after,
           f"stage b: rank 1 committed {by_rank[1]}, expected {args.kill_after} shards")
    resume = _launch([sys.executable, "-m", "tlprobes", *suite, "--resume"], _env(),
                     work / "b-resume.log")
    _check(resume["rc"] == 0, "stage b: --resume on one worker failed", work / "b-resume.log")
    after = _commits(call)
    n_shards = len(after)
    _check(all(after[n] == c for n, c in before.items()),
           "stage b: a shard committed before the crash was redone")
    redone = sorted(set(after) - set(before))
    pids = {after[n]["pid"] for n in redone}
    _check(len(pids) == 1, f"stage b: the resumed shards came from pids {pids}, expected one")
    m = _manifest(out)["shards"]
    compute = sorted(c["timings_s"]["compute"] for c in after.values())
    return {
        "what": "torchrun --nproc-per-node 2, rank 1 exits after 2 commits; --resume on 1 worker",
        "run_dir": str(out), "n_shards": n_shards,
        "crashed_run": {**crash, "commits": len(before), "commits_by_rank": by_rank},
        "resume": {**resume, "shards_computed": len(redone), "engine": m["engine"],
                   "world_size": m["world_size"]},
        "wall_s": round(crash["wall_s"] + resume["wall_s"], 3),
        "n_tokens": m["calls"][0]["n_tokens"],
        "shard_compute_s_median": compute[len(compute) // 2],
    }


def stage_c(args: argparse.Namespace, data: Path, work: Path, n_shards: int,
            shard_s: float | None) -> dict[str, Any]:
    out = work / "c-ray"
    call = work / "c-ray.shards" / "call-000"
    k = args.kill_shard if args.kill_shard is not None else n_shards // 2
    suite = _suite_args(args, data, out) + ["--shard-size", str(args.shard_size), "--engine", "ray",
                                            "--replicas", "2"]
    name = f"shard-{k:06d}"
    kill: dict[str, Any] = {"shard": k, "mode": args.ray_kill}
    extra = {"TLPROBES_FAULT_RAY_KILL_SHARD": str(k)} if args.ray_kill == "env" else {}
    delay = 0.5 * shard_s if shard_s else 1.0

    def watch(proc: subprocess.Popen) -> None:
        if args.ray_kill != "external" or "killed_pid" in kill:
            return
        starts = _starts(call, name)
        if not starts:
            return
        first = starts[0]
        if time.time() - first["time"] < delay:
            return
        committed = (call / name / "shard.json").exists()
        try:
            os.kill(first["pid"], signal.SIGKILL)  # the Ray actor running shard k (a pid it logged)
        except ProcessLookupError:
            kill["error"] = "the actor had already exited"
        kill.update({"killed_pid": first["pid"], "after_s": round(time.time() - first["time"], 3),
                     "committed_at_kill": committed})

    r = _launch([sys.executable, "-m", "tlprobes", *suite], _env(extra), work / "c-ray.log", watch)
    _check(r["rc"] == 0, "stage c: the Ray run failed", work / "c-ray.log")
    commits = _commits(call)
    attempts = {n: c["attempt"] for n, c in commits.items()}
    m = _manifest(out)["shards"]
    kill["mid_shard"] = (args.ray_kill == "external" and "killed_pid" in kill
                         and not kill.get("committed_at_kill") and "error" not in kill)
    _check(args.ray_kill == "env" or kill["mid_shard"],
           f"stage c: the actor was not killed mid-shard ({kill})")
    _check(attempts[name] == 2 and all(a == 1 for n, a in attempts.items() if n != name),
           f"stage c: expected attempt 2 for {name} only, got {attempts}")
    _check(m.get("actor_restarts") == 1, f"stage c: actor_restarts = {m.get('actor_restarts')}")
    return {**r, "what": "--engine ray --replicas 2, one actor SIGKILLed mid-shard",
            "run_dir": str(out), "n_shards": len(commits), "kill": kill,
            "actor_restarts": m.get("actor_restarts"), "replicas": m.get("replicas"),
            "n_tokens": m["calls"][0]["n_tokens"],
            "shards_per_replica": {str(s): len(v) for s, v in (m.get("assignment") or {}).items()}}


# ------------------------------------------------------------------------------------- compare
def _is_count(row_stat: str) -> bool:
    return row_stat in COUNT_STATS or row_stat.endswith("_n") or row_stat == "n"


def compare(ref: Path, other: Path) -> dict[str, Any]:
    """Counts exactly, other values within 1e-12 relative; raises on a difference."""
    import numpy as np
    import pandas as pd

    import tlprobes as tp

    ra, rb = tp.load_results(ref), tp.load_results(other)
    _check(set(ra.tables) == set(rb.tables), f"tables differ: {set(ra.tables)} vs {set(rb.tables)}")
    worst, n_values, n_counts = 0.0, 0, 0
    for name, a in ra.tables.items():
        b = rb.tables[name]
        _check(list(a.columns) == list(b.columns) and len(a) == len(b), f"{name}: shape differs")
        if "statistic" in a.columns:  # long tables: one value column
            keys = [c for c in a.columns if c != "value"]
            pd.testing.assert_frame_equal(a[keys], b[keys], obj=name)
            counts = a["statistic"].astype(str).map(_is_count).to_numpy()
            cols = {"value": (a["value"].to_numpy(float), b["value"].to_numpy(float))}
            count_masks = {"value": counts}
        else:  # wide tables: count columns by name
            cols = {c: (a[c].to_numpy(float), b[c].to_numpy(float)) for c in a.columns}
            count_masks = {c: np.full(len(a), _is_count(c) or c in ("block", "layer"))
                           for c in a.columns}
        for c, (x, y) in cols.items():
            cm = count_masks[c]
            same_nan = np.isnan(x) == np.isnan(y)
            _check(bool(same_nan.all()), f"{name}.{c}: NaN in one run only")
            ok = ~np.isnan(x)
            _check(bool((x[cm & ok] == y[cm & ok]).all()), f"{name}.{c}: counts differ")
            f = ~cm & ok
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.abs(x[f] - y[f]) / np.maximum(np.abs(x[f]), np.abs(y[f]))
            rel = np.where(x[f] == y[f], 0.0, rel)
            if rel.size:
                worst = max(worst, float(rel.max()))
            n_values += int(f.sum())
            n_counts += int((cm & ok).sum())
    _check(worst <= 1e-12, f"{other}: a value differs from {ref} by {worst:.3g} relative")
    _check(ra.facts == rb.facts, f"{other}: facts differ from {ref}")
    return {"tables": sorted(ra.tables), "counts_compared": n_counts, "counts_equal": True,
            "floats_compared": n_values, "max_rel_diff": worst, "within_1e-12": True}


# ------------------------------------------------------------------------------------- main
def _versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("tlprobes", "torch", "transformer-lens", "ray", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        out["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _default_json() -> Path:
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    path = HERE / "results" / f"scale-out-{day}.json"
    i = 2
    while path.exists():
        path = HERE / "results" / f"scale-out-{day}-{i}.json"
        i += 1
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, help="default: about --shards shards")
    p.add_argument("--shards", type=int, default=24, help="aim for this many shards")
    p.add_argument("--stages", default="a,t,b,c")
    p.add_argument("--kill-after", type=int, default=2, 
                   help="stage b: rank 1 exits after K commits")
    p.add_argument("--kill-shard", type=int, help="stage c: the shard whose actor is killed")
    p.add_argument("--ray-kill", choices=("external", "env"), default="external")
    p.add_argument("--work", 
                   help="folder for the dataset and the run folders (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--quick", action="store_true", help="512 prompts, batch 16, 8 shards")
    p.add_argument("--json", help="results file (default bench/results/scale-out-<date>.json)")
    p.add_argument("--no-json", action="store_true", help="print only")
    args = p.parse_args()
    if args.quick:
        args.prompts, args.batch_size, args.shards = 512, 16, 8
    if args.shard_size is None:
        per = math.ceil(args.prompts / args.shards / args.batch_size) * args.batch_size
        args.shard_size = max(per, args.batch_size)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tlprobes-scale-out-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    results: dict[str, Any] = {
        "issue": 15, "suite": SUITE,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": socket.gethostname(), "cpus": os.cpu_count(), "cpu": _cpu(),
                    "threads_per_worker": 1},
        "versions": _versions(),
        "settings": {"prompts": args.prompts, "batch_size": args.batch_size,
                     "shard_size": args.shard_size,
                     "n_shards": math.ceil(args.prompts / args.shard_size),
                     "kill_after_commits": args.kill_after, "ray_kill": args.ray_kill},
        "stages": {}, "compare": {},
    }
    try:
        data = work / "prompts.jsonl"
        results["dataset"] = write_prompts(data, args.prompts)
        print(f"{args.prompts} prompts -> {data} ({results['dataset']['generate_s']} s); batch "
              f"{args.batch_size}, shard size {args.shard_size} "
              f"({results['settings']['n_shards']} shards)", flush=True)
        st = results["stages"]
        if "a" in stages:
            st["a"] = stage_a(args, data, work)
            print(f"a  one process        {st['a']['wall_s']:8.1f} s", flush=True)
        if "t" in stages:
            st["t"] = stage_t(args, data, work)
            print(f"t  torchrun x2        {st['t']['wall_s']:8.1f} s", flush=True)
        if "b" in stages:
            st["b"] = stage_b(args, data, work)
            print(f"b  torchrun x2 + kill {st['b']['crashed_run']['wall_s']:8.1f} s "
                  f"({st['b']['crashed_run']['commits']} commits), resume "
                  f"{st['b']['resume']['wall_s']:.1f} s ({st['b']['resume']['shards_computed']} "
                  "shards)", flush=True)
        if "c" in stages:
            shard_s = st.get("b", {}).get("shard_compute_s_median")
            st["c"] = stage_c(args, data, work, results["settings"]["n_shards"], shard_s)
            print(f"c  ray x2 + kill      {st['c']['wall_s']:8.1f} s (kill: {st['c']['kill']})",
                  flush=True)
        tokens = next((s["n_tokens"] for s in st.values() if s.get("n_tokens")), None)
        results["n_tokens"] = tokens
        for s in st.values():
            if tokens:
                s["tokens_per_s"] = round(tokens / s["wall_s"], 1)
        if "a" in st:
            for other in ("t", "b", "c"):
                if other in st:
                    results["compare"][f"{other} vs a"] = compare(Path(st["a"]["run_dir"]),
                                                                  Path(st[other]["run_dir"]))
        if tokens and "a" in st:
            total = sum(s["wall_s"] for s in st.values())
            results["projection_100k_s"] = round(total * 100_000 / args.prompts, 0)
        results["total_wall_s"] = round(time.perf_counter() - t_all, 1)
        print(f"tokens {tokens}; compare {json.dumps(results['compare'], default=str)}")
        for k, s in st.items():
            print(f"{k}: {s['wall_s']:.1f} s, {s.get('tokens_per_s', 0):.0f} tokens/s, peak RSS "
                  f"{s.get('peak_rss_mib', s.get('resume', {}).get('peak_rss_mib'))} MiB")
        if "projection_100k_s" in results and args.prompts != 100_000:
            print("projected for 100,000 prompts, linear in the prompts with the start-up costs "
                  f"too (an upper bound; stages {','.join(st)}): "
                  f"{results['projection_100k_s'] / 60:.1f} min")
    finally:
        results["work"] = "kept ($WORK)" if args.keep else None
        if args.keep:
            print(f"runs kept in {work} ($WORK in the JSON)")
        if not args.no_json:
            path = Path(args.json) if args.json else _default_json()
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(results, indent=1, default=str)
            # the runs' temp folder is this machine's: record paths relative to it
            text = text.replace(json.dumps(str(work))[1:-1], "$WORK")
            path.write_text(text + "\n")
            print(f"wrote {path}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
