"""The ``diffvos`` command line. Each subcommand lives beside the code it drives and registers
itself here; heavy imports (torch, diffusers, onnxruntime) happen inside the commands that use them."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Protocol


class Subcommands(Protocol):
    """What ``register(sub)`` of a command module receives (``parser.add_subparsers()``)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...

# subcommand modules, each with register(subparsers) and light module-level imports
_COMMANDS = (
    "diffvos.export.cli",
    "diffvos.runtime.cli",
    "diffvos.runtime.segment_cli",
    "diffvos.runtime.doctor",
    "diffvos.evaluation.cli",
    "diffvos.calibration.cli",
    "diffvos.demo",
    "diffvos.serve.cli",
    "diffvos.dataset.cli",
)


def build_parser() -> argparse.ArgumentParser:
    from diffvos import __version__

    parser = argparse.ArgumentParser(
        prog="diffvos",
        description="Zero-shot video object tracking with diffusion-model features (ONNX / TensorRT).",
    )
    parser.add_argument("--version", action="version", version=f"diffvos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("diffvos"):
                continue  # a part of the toolkit not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from diffvos.errors import DiffvosError
    from diffvos.io.outputs import kept_note
    from diffvos.io.signals import Terminated, terminate_gracefully

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prefix = f"diffvos {args.command}"
    try:
        with terminate_gracefully():  # SIGTERM / SIGHUP clean up like Ctrl-C
            return int(args.func(args) or 0)
    except DiffvosError as exc:
        _say(f"{prefix}: error: {exc}", kept_note(exc))
        return 1
    except Terminated as exc:
        _say(f"{prefix}: stopped by {exc.name}; temporary files removed", kept_note(exc))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        _say("interrupted", kept_note(exc))
        return 130


def _say(line: str, note: str = "") -> None:
    print(line + (f"\n{note}" if note else ""), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
