"""The ``tlprobes`` command: run a suite, list suites, re-render a run directory.

::

    tlprobes run rotation_angles --out runs/angles      # a suite by name (probes/) or path
    tlprobes run probes/geometry.toml --model gpt2-xl --batch-size 8 --device cuda
    tlprobes run procrustes --model gpt2 --second-model path/to/hf_dir
    tlprobes list
    tlprobes render runs/angles
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tlprobes", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite and write a run directory with report.html")
    run.add_argument("suite", help="suite name (see `tlprobes list`) or path to a .toml file")
    run.add_argument("--model", help="model name, local HF directory or .gguf file (default: the suite's)")
    run.add_argument("--second-model", help="second model for two-model studies (procrustes)")
    run.add_argument("--out", help="output directory (default: runs/<suite name>)")
    run.add_argument("--batch-size", type=int, help="prompts per forward pass")
    run.add_argument("--device", help="cpu, cuda, cuda:1, mps ...")
    run.add_argument("--save-arrays", action="store_true", help="also save captured arrays (safetensors)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    sub.add_parser("list", help="list the suites in probes/")
    render = sub.add_parser("render", help="rebuild report.html of a run directory")
    render.add_argument("dir", help="a run directory written by `tlprobes run`")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._errors import TLProbesError

    try:
        if args.command == "list":
            from .suites import find_suite, list_suites, load_suite

            for name in list_suites():
                suite = load_suite(find_suite(name))
                print(f"{name:24s} {suite.study:13s} {len(suite.prompts):4d} prompts  {suite.title}")
            return 0
        if args.command == "render":
            from .suites import render_run

            print(render_run(args.dir))
            return 0
        from .suites import run_suite

        if args.quiet:
            os.environ["TQDM_DISABLE"] = "1"
        run_suite(args.suite, out=args.out, model=args.model, second_model=args.second_model,
                  batch_size=args.batch_size,
                  device=args.device, save_arrays=args.save_arrays, quiet=args.quiet)
        return 0
    except TLProbesError as err:
        print(f"tlprobes: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
