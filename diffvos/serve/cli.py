"""``diffvos serve`` (a Triton server on a bundle) and ``diffvos export-triton`` (a model repository
for a stock Triton server)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def _serve_options(p: argparse.ArgumentParser) -> None:
    from diffvos.config import BACKENDS
    from diffvos.serve.repository import ServeOptions

    d = ServeOptions()
    g = p.add_argument_group("the served model")
    g.add_argument("--max-streams", type=int, default=d.max_streams,
                   help=f"open streams per model instance; one START more gets 503 / UNAVAILABLE (default {d.max_streams})")
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help=f"seconds without a request after which a stream is closed (default {d.idle_timeout_s:g})")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"largest frame (width x height) accepted; larger ones get 400 / INVALID_ARGUMENT "
                        f"(default {d.max_pixels})")
    g.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"requests of concurrent streams batched into one call (default {d.max_batch})")
    g.add_argument("--queue-delay-us", type=int, default=d.queue_delay_us,
                   help=f"microseconds the batcher waits for more streams (default {d.queue_delay_us})")
    g.add_argument("--instances", type=int, default=d.instances, help=f"model instances (default {d.instances})")
    g.add_argument("--backend", choices=BACKENDS, default=d.backend, help=f"runtime backend (default {d.backend})")
    g.add_argument("--threads", type=int, default=d.threads, help="ONNX Runtime threads (default: its own)")
    g.add_argument("--session-options", default="{}",
                   help='JSON of session options for every stream, e.g. \'{"memory": 10, "seed": 1}\'')
    g.add_argument("--model-name", default=None, help="model name (default diffvos_tracker)")


def _options(args: argparse.Namespace, env_path: str | None = None):
    from diffvos.errors import InputError
    from diffvos.serve.repository import ServeOptions

    try:
        session = json.loads(args.session_options)
    except json.JSONDecodeError as exc:
        raise InputError(f"--session-options is not JSON: {exc}") from None
    if not isinstance(session, dict):
        raise InputError("--session-options must be a JSON object")
    options = ServeOptions(max_streams=args.max_streams, idle_timeout_s=args.idle_timeout, max_pixels=args.max_pixels,
                           max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, instances=args.instances,
                           backend=args.backend, threads=args.threads, session=session, env_path=env_path)
    options.check()
    return options


def register(sub: Subcommands) -> None:
    p = sub.add_parser("serve", help="serve a bundle on Triton Inference Server (stateful tracking over HTTP/gRPC)")
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics (/metrics)")
    p.add_argument("--exit-timeout", type=int, default=5,
                   help="seconds in-flight requests get to finish when stopping (default 5)")
    p.add_argument("--log", help="tritonserver log file (default: a temporary file, shown if the server fails)")
    _serve_options(p)
    p.set_defaults(func=run_serve)

    e = sub.add_parser("export-triton", help="write a Triton model repository for a bundle (stock tritonserver)")
    e.add_argument("--bundle", required=True, help="bundle directory")
    e.add_argument("--output", "-o", required=True, help="model repository directory to create")
    e.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    e.add_argument("--link-bundle", action="store_true",
                   help="refer to the bundle by its absolute path instead of copying it into the repository")
    e.add_argument("--env-path", help="EXECUTION_ENV_PATH: the Python environment (with diffvos) the backend runs in")
    _serve_options(e)
    e.set_defaults(func=run_export_triton)


def run_export_triton(args: argparse.Namespace) -> int:
    from diffvos.io.outputs import guard_outputs
    from diffvos.serve.protocol import MODEL_NAME
    from diffvos.serve.repository import export_triton

    with guard_outputs({"--output": args.output}, {"--bundle": args.bundle}, force=args.force, dirs=("--output",)):
        model = export_triton(args.bundle, args.output, _options(args, args.env_path),
                              model_name=args.model_name or MODEL_NAME, link_bundle=args.link_bundle, force=args.force)
    print(f"model repository written to {args.output} (model '{model.name}'); serve it with "
          f"tritonserver --model-repository {args.output} (see README, 'Serving and scale-out')")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from diffvos.serve.protocol import MODEL_NAME
    from diffvos.serve.repository import export_triton
    from diffvos.serve.server import Ports, TritonServer

    name = args.model_name or MODEL_NAME
    options = _options(args)
    with tempfile.TemporaryDirectory(prefix="diffvos-serve-") as tmp:
        repo = Path(tmp) / "repository"
        export_triton(args.bundle, repo, options, model_name=name, link_bundle=True)
        server = TritonServer(repo, model=name, host=args.host, ports=Ports(args.http_port, args.grpc_port,
                                                                             args.metrics_port),
                              log_file=Path(args.log) if args.log else None, exit_timeout_s=args.exit_timeout)
        stop = {"signal": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum
            server.request_stop()  # the main thread's wait() returns when tritonserver has exited

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if stop["signal"] is None:
                server.start()
            h = args.host
            print(f"serving model '{name}' ({args.bundle}): HTTP {h}:{args.http_port}, gRPC {h}:{args.grpc_port}, "
                  f"metrics http://{h}:{args.metrics_port}/metrics, ready at http://{h}:{args.http_port}/v2/models/"
                  f"{name}/ready; Ctrl-C stops", flush=True)
            code = server.wait()
            if stop["signal"] is None:
                print(f"tritonserver exited with status {code}:\n{server.log_tail(2000)}", file=sys.stderr)
                return 1
            return 0
        finally:
            server.stop()
            for s, handler in old.items():
                signal.signal(s, handler)
