"""`zamba2vl train` and `zamba2vl build`: train a stage from a YAML file; assemble a model from parts.

    zamba2vl train --config configs/train/nano.yaml
    zamba2vl train --config configs/train/nano.yaml --resume              # from the newest checkpoint
    zamba2vl train --config stage.yaml --set optim.lr=3e-4 --set output_dir=runs/x
    torchrun --nproc-per-node 2 -m zamba2vl.train --config stage.yaml      # DistributedDataParallel
    zamba2vl build --text Zyphra/Zamba2-1.2B-dir --vision Qwen2.5-VL-3B-dir --out z2vl-init

The main CLI mounts these with ``add_train_arguments`` / ``run_train_from_args`` and ``add_build_arguments`` /
``run_build_from_args``; ``python -m zamba2vl.train`` runs training alone.
"""

from __future__ import annotations

import argparse
import json
import sys

from zamba2vl.errors import Zamba2VLError


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=True, help="stage YAML (see configs/train/*.yaml)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint of output_dir (or from the given step-* folder); "
                             "starts fresh if there is none")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable; values are YAML)")
    parser.add_argument("--output-dir", help="shorthand for --set output_dir=...")
    parser.add_argument("--max-steps", type=int, help="shorthand for --set optim.max_steps=...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run_train_from_args(args: argparse.Namespace) -> int:
    from zamba2vl.train.config import load_config
    from zamba2vl.train.trainer import run_training

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"optim.max_steps={args.max_steps}")
    config = load_config(args.config, overrides)
    if args.no_progress:
        config.data.progress = False
    summary = run_training(config, resume=args.resume, progress=not args.no_progress)
    if summary.get("eval") is not None:
        print(json.dumps({"step": summary["step"], "eval": summary["eval"]}))
    return 0


def add_build_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--text", required=True, help="Zamba2 text checkpoint folder")
    parser.add_argument("--vision", required=True, help="Qwen2.5-VL checkpoint folder (its visual.* tensors are used)")
    parser.add_argument("--out", required=True, help="folder to write the Zamba2-VL checkpoint to (Hub layout)")
    parser.add_argument("--image-token-index", type=int, default=32000)
    parser.add_argument("--vocab-size", type=int, help="default: the text vocabulary, grown to hold the image token")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new merger output layer")
    return parser


def run_build_from_args(args: argparse.Namespace) -> int:
    from zamba2vl.train.build import build_from_parts

    model = build_from_parts(args.text, args.vision, args.out, image_token_index=args.image_token_index,
                             vocab_size=args.vocab_size, seed=args.seed)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote a {n / 1e6:.1f}M-parameter Zamba2-VL to {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="python -m zamba2vl.train",
                                                         description="Train a Zamba2-VL stage from a YAML config."))
    args = parser.parse_args(argv)
    try:
        return run_train_from_args(args)
    except Zamba2VLError as e:
        print(f"zamba2vl train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
