"""``zamba2vl serve``: load a checkpoint and serve it over an OpenAI-compatible HTTP API with a chat page.

The lead CLI mounts it as::

    s = sub.add_parser("serve", help=...)
    add_serve_arguments(s)
    s.set_defaults(func=run_serve_from_args)

``python -m zamba2vl.serve --model M`` runs the same thing.
"""

from __future__ import annotations

import argparse
import os
import sys

from zamba2vl.serve.settings import MiB, ServeSettings

_DEFAULTS = ServeSettings(model_name="")
DESCRIPTION = ("Serve a checkpoint over an OpenAI-compatible HTTP API (POST /v1/chat/completions with images and "
               "streaming, GET /v1/models, /health, /metrics) with a chat page at /.")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", required=True, help="checkpoint folder or Hugging Face repo id")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                   help="weights and activations dtype (auto: bfloat16 on CPU)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--served-model-name", default=None,
                   help="the model name clients send (default: the folder's name, or the repo id)")
    p.add_argument("--max-length", type=int, default=None, help="context in tokens (default: the model's)")
    g = p.add_argument_group("scheduling")
    g.add_argument("--max-batch-size", type=int, default=_DEFAULTS.max_batch_size,
                   help=f"requests decoded together (default {_DEFAULTS.max_batch_size})")
    g.add_argument("--max-queue", type=int, default=_DEFAULTS.max_queue,
                   help=f"requests waiting for a slot; more get 503 (default {_DEFAULTS.max_queue})")
    g.add_argument("--request-timeout", type=float, default=_DEFAULTS.request_timeout_s,
                   help=f"seconds from arrival to the last token (default {_DEFAULTS.request_timeout_s:g})")
    g.add_argument("--prefill-tokens-per-step", type=int, default=_DEFAULTS.prefill_tokens_per_step,
                   help="prompt tokens prefilled between two decode steps (default %(default)s)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model (default: torch's, usually one per core)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=float, default=_DEFAULTS.max_body_bytes / MiB,
                   help="largest request body in MiB; larger get 413 (default %(default)g)")
    g.add_argument("--max-images", type=int, default=_DEFAULTS.max_images,
                   help="images per request (default %(default)s)")
    g.add_argument("--max-image-pixels", type=int, default=_DEFAULTS.max_image_pixels,
                   help="largest image (width x height) accepted before resizing (default %(default)s)")
    g.add_argument("--max-pixels", type=int, default=None,
                   help="each image is resized to at most this many pixels (default: the checkpoint's setting)")
    g.add_argument("--allow-remote-images", action="store_true",
                   help="download http(s) image URLs (off: only base64 data: URLs); file: URLs are always refused")
    g.add_argument("--remote-image-timeout", type=float, default=_DEFAULTS.remote_image_timeout_s,
                   help="seconds for one remote image download (default %(default)g)")
    g.add_argument("--remote-image-max-mb", type=float, default=_DEFAULTS.remote_image_max_bytes / MiB,
                   help="largest remote image in MiB (default %(default)g)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def default_model_name(model: str) -> str:
    return os.path.basename(os.path.normpath(model)) if os.path.isdir(model) else model


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        model_name=args.served_model_name or default_model_name(args.model),
        max_batch_size=args.max_batch_size, max_queue=args.max_queue, request_timeout_s=args.request_timeout,
        prefill_tokens_per_step=args.prefill_tokens_per_step, torch_threads=args.threads,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_images=args.max_images, max_image_pixels=args.max_image_pixels, max_pixels=args.max_pixels,
        allow_remote_images=args.allow_remote_images, remote_image_timeout_s=args.remote_image_timeout,
        remote_image_max_bytes=int(args.remote_image_max_mb * MiB),
    )


def run_serve_from_args(args: argparse.Namespace) -> int:
    import uvicorn

    from zamba2vl.pipeline import load
    from zamba2vl.serve.app import create_app
    from zamba2vl.serve.logs import configure_logging, log
    from zamba2vl.runtime import SERVE_ARENAS, SERVE_MMAP_THRESHOLD, tune_cpu_allocator
    from zamba2vl.serve.runner import bind_socket, is_loopback, uvicorn_config

    configure_logging(args.log_level)
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        print(f"zamba2vl serve: {e}", file=sys.stderr)
        return 2
    try:
        sock = bind_socket(args.host, args.port)  # before loading: a taken port fails fast
    except OSError as e:
        print(f"zamba2vl serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    # Request states go back to the OS when freed, and all that is free when the worker idles (see runtime.py).
    tune_cpu_allocator(SERVE_MMAP_THRESHOLD, arenas=SERVE_ARENAS)
    print(f"zamba2vl serve: loading {args.model} ...", file=sys.stderr, flush=True)
    dtype = None if args.dtype == "auto" and args.device != "cpu" else args.dtype
    vlm = load(args.model, dtype=dtype, device=args.device, max_length=args.max_length)
    app = create_app(vlm, settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    reach = ("loopback only: reachable from this machine alone; pass --host 0.0.0.0 to expose it" if is_loopback(host)
             else "reachable from the network: anyone who can connect can use the model")
    print(f"zamba2vl serve: serving {settings.model_name!r} on http://{shown}:{port} ({reach}). "
          f"OpenAI API at http://{shown}:{port}/v1, chat page at http://{shown}:{port}/", file=sys.stderr, flush=True)
    log.info("listening", extra={"fields": {
        "event": "start", "host": host, "port": port, "model": settings.model_name, "loopback": is_loopback(host),
        "remote_images": settings.allow_remote_images}})
    try:
        uvicorn.Server(uvicorn_config(app, log_level=args.log_level)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl-C, then re-raises it
        pass
    print("zamba2vl serve: stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zamba2vl serve", description=DESCRIPTION)
    add_serve_arguments(parser)
    return run_serve_from_args(parser.parse_args(argv))
