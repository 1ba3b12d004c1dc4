"""Train a shipped default model and regenerate the model card.

    python scripts/train_default.py --seed 0 --out src/tlprobes/models/default_s0
    python scripts/train_default.py --seed 1 --out src/tlprobes/models/default_s1

Deterministic from ``--seed`` (model) and ``--corpus-seed`` (text and tokenizer); one CPU thread.
After training, MODEL_CARD.md (next to the output directory) is rewritten from every
``default_s*/card.json`` found there. ``--card-only`` just rewrites the card;
``--prompts probes/prompts`` also rewrites the suites' prompt sets from the grammar.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tlprobes.models.training.corpus import write_prompt_sets
    from tlprobes.models.training.train import TrainConfig, train_default, write_model_card

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0, help="model seed (init and batch order)")
    ap.add_argument("--corpus-seed", type=int, default=0, help="corpus and tokenizer seed")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--train-docs", type=int, default=TrainConfig.n_train_docs)
    ap.add_argument(
        "--copy-fraction",
        type=float,
        default=TrainConfig.copy_fraction,
        help="share of each batch given to the random-block copy curriculum",
    )
    ap.add_argument(
        "--card",
        type=Path,
        default=None,
        help="model card to (re)write; default: MODEL_CARD.md beside --out",
    )
    ap.add_argument("--card-only", action="store_true", help="only rewrite the model card")
    ap.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="also (re)write the grammar's prompt sets into this folder (probes/prompts)",
    )
    args = ap.parse_args(argv)

    if args.prompts is not None:
        for path in write_prompt_sets(args.prompts, seed=args.corpus_seed):
            print(f"wrote {path}")
    if not args.card_only:
        cfg = TrainConfig(
            seed=args.seed,
            corpus_seed=args.corpus_seed,
            steps=args.steps,
            n_train_docs=args.train_docs,
            copy_fraction=args.copy_fraction,
        )
        train_default(cfg, args.out)
    card = args.card or args.out.parent / "MODEL_CARD.md"
    dirs = sorted(p for p in args.out.parent.glob("default_s*") if (p / "card.json").exists())
    if dirs:
        write_model_card(dirs, card)
        print(f"wrote {card} from {[d.name for d in dirs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
