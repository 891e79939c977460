"""The `zamba2vl` command line: generate | chat | demo | eval | train | build | serve | bench."""

from __future__ import annotations

import argparse
import sys
import time

from zamba2vl.errors import Zamba2VLError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder or Hugging Face repo id (e.g. Zyphra/Zamba2-VL-1.2B)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                   help="weights and activations dtype (auto: bfloat16 where the CPU has native bf16 matmuls, "
                        "else float32 if it fits in memory; the checkpoint's dtype on GPU)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--packed-decode", default="off", choices=["auto", "on", "off"],
                   help="keep a second copy of the bf16 language-model weights in oneDNN's layout: ~1.6x faster "
                        "decode products on CPUs with native bf16, for the weights' memory once more (off by "
                        "default; auto: on when the copy fits in a quarter of the free memory)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (with --temperature > 0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--max-pixels", type=int, default=None, help="pixel budget per image (tokens = pixels / 784)")
    p.add_argument("--min-pixels", type=int, default=None, help="minimum pixels per image")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--verbose", action="store_true", help="print time to first token and prefill/decode speed")
    p.add_argument("--prefill-chunk-size", type=_chunk_size, default="auto", metavar="auto|N",
                   help="prefill the prompt in pieces of N tokens (bounded memory, same output); auto (default): "
                        "pieces of 8192 for prompts over 8192 tokens; 0: all at once")


def _chunk_size(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number of tokens >= 0, got {text!r}")
    return n


def _gen_kwargs(args) -> dict:
    sample = args.temperature > 0
    return dict(max_new_tokens=args.max_new_tokens, do_sample=sample, temperature=args.temperature if sample else 1.0,
                top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
                prefill_chunk_size=getattr(args, "prefill_chunk_size", "auto"))


def _load(args):
    from zamba2vl.pipeline import load

    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    packed = {"auto": "auto", "on": True, "off": False}[getattr(args, "packed_decode", "off")]
    vlm = load(args.model, dtype=args.dtype, device=args.device, packed_decode=packed)
    n = sum(p.numel() for p in vlm.model.parameters())
    print(f"loaded {n / 1e6:.1f}M parameters ({vlm.model.dtype}) in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return vlm


def _print_timings(result) -> None:
    t = result.timings
    print(f"\n[time to first token {t.time_to_first_token_s * 1000:.0f} ms | prefill {t.prefill_tokens} tokens at "
          f"{t.prefill_tok_s:.1f} tok/s | decode {t.decode_tokens} tokens at {t.decode_tok_s:.1f} tok/s | "
          f"total {t.total_s:.2f}s]", file=sys.stderr)


def _cmd_generate(args) -> int:
    vlm = _load(args)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    content = [{"type": "image", "image": path} for path in args.image] + [{"type": "text", "text": args.prompt}]
    messages.append({"role": "user", "content": content})
    gen = _gen_kwargs(args)
    out = vlm.generate(messages, stream=True, max_pixels=args.max_pixels, min_pixels=args.min_pixels, **gen)
    for delta in out:
        print(delta, end="", flush=True)
    print()
    result = out.result
    if args.verbose:
        _print_timings(result)
    if args.draw_boxes:
        _draw(vlm, args, result)
    return 0


def _draw(vlm, args, result) -> None:
    from zamba2vl.grounding import draw_boxes, parse_boxes, to_original
    from zamba2vl.processing.image import load_image

    if not args.image:
        print("--draw-boxes needs an --image", file=sys.stderr)
        return
    inputs = vlm.prepare([{"role": "user", "content": [{"type": "image", "image": args.image[0]}, {"type": "text", "text": "."}]}],
                         max_pixels=args.max_pixels, min_pixels=args.min_pixels)
    boxes = to_original(parse_boxes(result.text), inputs.resized_sizes[0], inputs.image_sizes[0])
    draw_boxes(load_image(args.image[0]), boxes, args.draw_boxes)
    print(f"drew {len(boxes)} box(es) on {args.draw_boxes}", file=sys.stderr)


def _cmd_chat(args) -> int:
    vlm = _load(args)
    session = vlm.session(system=args.system, **_gen_kwargs(args))
    pending: list[str] = list(args.image or [])
    print("Type a message. Commands: /image PATH (attach an image to the next message), /reset, /quit.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session = vlm.session(system=args.system, **_gen_kwargs(args))
            pending = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                from zamba2vl.processing.image import read_image_size

                read_image_size(path)
            except Zamba2VLError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            pending.append(path)
            print(f"(attached {path}; it goes with your next message)", file=sys.stderr)
            continue
        try:
            answer = session.send(line, images=pending)
        except Zamba2VLError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        pending = []
        print(f"assistant> {answer}")
        if args.verbose:
            print(f"(prefilled {session.last_prefill_tokens} new tokens)", file=sys.stderr)
            _print_timings(session.last_result)


def _cmd_demo(args) -> int:
    from zamba2vl.demo import run_demo

    return run_demo(args)


def _cmd_eval(args) -> int:
    from zamba2vl.eval.cli import run_eval_from_args

    return int(run_eval_from_args(args) or 0)


def _bench_suite_path():
    """benchmarks/suite.py of the source checkout this package runs from (or $ZAMBA2VL_BENCHMARKS/suite.py)."""
    import os
    from pathlib import Path

    folder = os.environ.get("ZAMBA2VL_BENCHMARKS")
    folder = Path(folder) if folder else Path(__file__).resolve().parents[2] / "benchmarks"
    return folder / "suite.py"


def _cmd_bench(argv: list[str]) -> int:
    """``zamba2vl bench ...``: hand the arguments to the benchmark suite (its own parser and --help)."""
    import importlib.util

    path = _bench_suite_path()
    if not path.is_file():
        print(f"zamba2vl: error: the benchmark suite is not here ({path}). It ships with the source checkout, not "
              "the wheel: run `zamba2vl bench` from an editable install of the repository (make install), or set "
              "ZAMBA2VL_BENCHMARKS to the checkout's benchmarks/ folder.", file=sys.stderr)
        return 2
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("zamba2vl_bench_suite", path)
    suite = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = suite  # dataclasses look their module up there
    spec.loader.exec_module(suite)
    return int(suite.main(argv, prog="zamba2vl bench") or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zamba2vl",
        description="Run, evaluate and (soon) serve and train Zyphra's Zamba2-VL models in pure PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="answer one prompt about zero or more images",
                       description="Answer one prompt about zero or more images, streaming the answer to stdout.")
    _add_model_args(g)
    g.add_argument("--image", action="append", default=[], help="image file, repeat for several images")
    g.add_argument("--prompt", required=True, help="the question or instruction")
    g.add_argument("--draw-boxes", metavar="OUT.png", default=None,
                   help="parse boxes in the answer and draw them on the first image")
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser("chat", help="interactive multi-turn chat (the model state is kept between turns)")
    _add_model_args(c)
    c.add_argument("--image", action="append", default=[], help="image(s) attached to the first message")
    c.set_defaults(func=_cmd_chat)

    from zamba2vl.demo import add_demo_arguments

    d = sub.add_parser("demo", help="answer questions about the bundled example images with the shipped model",
                       description="Answer questions about the bundled example images (or yours, with --image) "
                                   "with the small model that ships with zamba2vl. Offline.")
    add_demo_arguments(d)
    d.set_defaults(func=_cmd_demo)

    from zamba2vl.eval.cli import add_eval_arguments

    e = sub.add_parser("eval", help="score a model on the Zamba2-VL report's benchmarks (or the synthetic one)")
    add_eval_arguments(e)
    e.set_defaults(func=_cmd_eval)
    from zamba2vl.train.cli import add_build_arguments, add_train_arguments, run_build_from_args, run_train_from_args

    t = sub.add_parser("train", help="train a stage (align, pretrain, sft) from a YAML config; torchrun-ready",
                       description="Train a Zamba2-VL stage from a YAML config (see configs/train/).")
    add_train_arguments(t)
    t.set_defaults(func=run_train_from_args)
    b = sub.add_parser("build", help="join a Zamba2 text checkpoint and a Qwen2.5-VL vision tower into a Zamba2-VL")
    add_build_arguments(b)
    b.set_defaults(func=run_build_from_args)
    from zamba2vl.serve.cli import add_serve_arguments, run_serve_from_args

    s = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with a chat page")
    add_serve_arguments(s)
    s.set_defaults(func=run_serve_from_args)
    # Only listed here: main() hands `bench ...` to benchmarks/suite.py, whose parser owns the options and --help.
    sub.add_parser("bench", help="speed and memory benchmarks against transformers (zamba2vl bench --help)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from zamba2vl.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # reuse freed memory instead of page-faulting fresh pages each step (see runtime.py)
    if argv[:1] == ["bench"]:
        try:
            return _cmd_bench(argv[1:])
        except KeyboardInterrupt:
            return 130
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Zamba2VLError as e:
        print(f"zamba2vl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
