"""The ``tlprobes`` command: run a suite, list suites, re-render a run directory.

::

    tlprobes run rotation_angles --out runs/angles      # a suite by name (probes/) or path
    tlprobes run probes/geometry.toml --model gpt2-xl --batch-size 8 --device cuda
    tlprobes run procrustes --model gpt2 --second-model path/to/hf_dir
    tlprobes run path_length --dataset data/wiki.parquet --column text --limit 100000
    tlprobes list --suites my_suites/
    tlprobes render runs/angles
    tlprobes run rotation_angles --shard-size 64 --resume          # sharded, resumable
    torchrun --nproc-per-node 2 -m tlprobes run rotation_angles     # one shard stream per rank
    tlprobes status runs/angles                                     # shards done / running / missing
    tlprobes merge runs/angles                                      # run directory from the commits

A user error (a bad suite, value, path or device) prints one line ``tlprobes: error: ...`` naming
the bad value and what would be valid, and exits with status 2; ``--debug`` also prints the
traceback. An internal error exits with status 1. Everything that can be checked without the model
is checked before it loads. ``--help`` and ``--version`` answer without importing torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["main"]

_ISSUES = "https://github.com/tlprobes/tlprobes/issues"


class _Parser(argparse.ArgumentParser):
    """argparse, but its usage errors are one line in the same format as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tlprobes: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer (1, 8, 16 ...)")
    return value


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="tlprobes", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--version", action="version", version=f"tlprobes {__version__}")
    p.add_argument("--debug", action="store_true", help="print the full traceback of any error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a suite and write a run directory with report.html")
    run.add_argument("suite", help="suite name (see `tlprobes list`) or path to a .toml file")
    run.add_argument("--model", help="model name, local HF directory or .gguf file (default: the suite's)")
    run.add_argument("--second-model", help="second model for two-model studies (procrustes)")
    run.add_argument("--out", help="output directory (default: runs/<suite name>)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing, non-empty --out (the whole old run)")
    run.add_argument("--batch-size", type=_positive_int, help="prompts per forward pass")
    run.add_argument("--device", help="cpu, cuda, cuda:1, mps ...")
    run.add_argument("--save-arrays", action="store_true", help="also save captured arrays (safetensors)")
    run.add_argument("--suites", action="append", default=[], metavar="DIR",
                     help="also look for suites by name in DIR (repeatable)")
    run.add_argument("--dataset", metavar="PATH",
                     help="read the prompts from a dataset: .txt, .jsonl, .csv/.tsv, .parquet or a HF "
                          "datasets folder (streamed; Parquet and HF need `pip install 'tlprobes[data]'`)")
    run.add_argument("--column", metavar="C", help="the dataset column holding the prompts")
    run.add_argument("--limit", type=_positive_int, metavar="N", help="run the first N prompts only")
    run.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    run.add_argument("--engine", choices=("local", "torchrun", "ray"),
                     help="shard the run: commits under OUT.shards/ (default: torchrun when started "
                          "by torchrun, else unsharded unless --shard-size or --resume)")
    run.add_argument("--shard-size", type=_positive_int,
                     help="prompts per shard, a multiple of the batch size (default 64 batches)")
    run.add_argument("--resume", action="store_true",
                     help="compute only the shards without a valid commit (any engine, any worker count)")
    run.add_argument("--replicas", type=_positive_int, help="ray: number of model replicas")
    run.add_argument("--gpus-per-replica", type=_positive_int, help="ray: GPUs given to each replica")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    lst = sub.add_parser("list", help="list the suites in --suites DIR, ./probes and the shipped probes/")
    lst.add_argument("--suites", action="append", default=[], metavar="DIR",
                     help="also list the suites in DIR (repeatable)")
    lst.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    render = sub.add_parser("render", help="rebuild report.html of a run directory")
    render.add_argument("dir", help="a run directory written by `tlprobes run`")
    render.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    merge = sub.add_parser("merge", help="fold the committed shards of a sharded run, in shard order")
    merge.add_argument("dir", help="a run folder (or its .shards folder), or a tp.run(out=...) folder")
    merge.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    status = sub.add_parser("status", help="shards done, running and missing of a sharded run")
    status.add_argument("dir", help="a run folder (or its .shards folder), or a tp.run(out=...) folder")
    status.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _check_dirs(dirs: Sequence[str]) -> None:
    from ._errors import InputError

    for d in dirs:
        if not os.path.isdir(d):
            raise InputError(f"--suites {d!r} is not a folder")


def _list(args: Any) -> int:
    from .suites import find_suite, list_suites, load_suite

    _check_dirs(args.suites)
    names = list_suites(args.suites)
    if not names:
        print("tlprobes: no suites found (looked in --suites, ./probes and the shipped probes/)")
    for name in names:
        try:
            suite = load_suite(find_suite(name, args.suites))
        except Exception as err:  # noqa: BLE001 - list every suite, broken ones with their error
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"{name:24s} BROKEN: {first}")
            continue
        print(f"{name:24s} {suite.study:13s} {len(suite.prompts):4d} prompts  {suite.title}")
    return 0


def _run(args: Any) -> int:
    from .suites import find_suite, load_suite, run_suite

    _check_dirs(args.suites)
    suite = load_suite(find_suite(args.suite, args.suites))
    if args.dataset is not None or args.column is not None or args.limit is not None:
        from .suites._schema import with_dataset

        suite = with_dataset(suite, args.dataset, column=args.column, limit=args.limit)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    options = {k: v for k, v in (("replicas", args.replicas),
                                 ("gpus_per_replica", args.gpus_per_replica)) if v is not None}
    if options and args.engine != "ray":
        from ._errors import InputError

        raise InputError(f"--replicas and --gpus-per-replica are options of --engine ray, got "
                         f"--engine {args.engine or 'local'!r}")
    if args.batch_size and args.shard_size and args.shard_size % args.batch_size:
        from ._errors import InputError

        raise InputError(f"--shard-size {args.shard_size} must be a multiple of --batch-size "
                         f"{args.batch_size}")
    run_suite(suite, out=args.out, model=args.model, second_model=args.second_model,
              batch_size=args.batch_size, device=args.device, save_arrays=args.save_arrays,
              quiet=args.quiet, overwrite=args.overwrite, engine=args.engine,
              shard_size=args.shard_size, resume=args.resume, engine_options=options or None)
    return 0


def _status(args: Any) -> int:
    from ._shards.merge import status

    for name, st in status(args.dir).items():
        print(f"{name}: {len(st['done'])}/{st['n_shards']} done, {len(st['running'])} running "
              f"{st['running']}, {len(st['missing'])} missing {st['missing']}  ({st['dir']})")
    return 0


def _merge(args: Any) -> int:
    from ._shards.merge import merge_run, suite_request

    suite_json = suite_request(args.dir)
    if suite_json is not None:  # a suite's sharded run: the study's analysis runs on the merge
        from .suites._run import merge_sharded_suite

        out = merge_sharded_suite(suite_json, require_complete=True)
    else:
        out = merge_run(args.dir)
    print(out if not hasattr(out, "inputs") else f"tlprobes: merged {out!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 1 internal error)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
    from ._errors import TLProbesError

    debug = getattr(args, "debug", False)
    try:
        if args.command == "list":
            return _list(args)
        if args.command == "status":
            return _status(args)
        if args.command == "merge":
            return _merge(args)
        if args.command == "render":
            from .suites import render_run

            print(render_run(args.dir))
            return 0
        return _run(args)
    except TLProbesError as err:
        if debug:
            traceback.print_exc()
        msg = " ".join(str(err).split("\n")) if str(err) else type(err).__name__
        print(f"tlprobes: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tlprobes: interrupted (nothing was written)", file=sys.stderr)
        return 130
    except OSError as err:  # a disk or permission problem the checks could not foresee
        if debug:
            traceback.print_exc()
        print(f"tlprobes: error: {err.strerror or err}: {err.filename!r}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: say so briefly, the traceback on --debug
        if debug:
            traceback.print_exc()
        print(f"tlprobes: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
              f" -- this is a bug in tlprobes; re-run with --debug for the traceback and report it "
              f"at {_ISSUES}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
