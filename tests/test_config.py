"""Every default lives once, in diffvos.config: the CLI, the Python API, the C ABI's header and
the README are generated from it or checked against it here; bad values name the option and
its valid range."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from diffvos.cli import build_parser
from diffvos.config import (
    BACKENDS,
    PRECISIONS,
    PropagationConfig,
    RuntimeConfig,
    SessionConfig,
    flag,
    session_config_from_args,
)
from diffvos.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "diffvos" / "runtime" / "capi" / "diffvos.h"


COMMANDS = {  # each command that tracks, with its required arguments
    "track": ["track", "--bundle", "b", "-i", "v", "-m", "m", "-o", "o"],
    "demo": ["demo"],
    "bench quality": ["bench", "quality", "--bundle", "b", "--davis", "d"],
}


def _parse(command: str, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args(COMMANDS[command] + list(extra))


def _cli_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_defaults_are_the_config_defaults(command):
    args = _parse(command)
    for cls in (RuntimeConfig, SessionConfig) + ((PropagationConfig,) if command != "demo" else ()):
        for f in _cli_fields(cls):
            assert getattr(args, f.name) == f.default, (command, f.name)
    for backend in BACKENDS:  # every backend, the native TensorRT one included, is offered
        assert _parse(command, "--backend", backend).backend == backend
    with pytest.raises(SystemExit):
        _parse(command, "--backend", "gpu9000")


def test_header_documents_the_config_defaults():
    text = HEADER.read_text()
    documented = dict(re.findall(r"(\w+);\s*/\*[^*]*?\(default ([^)]+)\)", text))
    p, s, r = PropagationConfig(), SessionConfig(), RuntimeConfig()
    expected = {
        "memory": str(p.memory), "topk": str(p.topk), "radius": str(p.radius), "temperature": f"{p.temperature:g}",
        "mag_filter": p.mag_filter, "seed": str(s.seed), "fresh_noise": str(int(s.fresh_noise)),
        "color": s.color, "concurrency": s.concurrency, "backend": r.backend, "threads": str(r.threads),
        "verify_files": str(int(r.verify_files)), "allow_failed_calibration": str(int(r.allow_failed_calibration)),
        "head_weights": p.head_weights, "propagation_kernel": p.propagation_kernel,
        "inversion_steps": str(s.inversion_steps),
    }
    assert documented == expected
    assert all(f'"{b}"' in text for b in BACKENDS)


def test_readme_documents_the_config_defaults():
    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("Propagation options"))
    documented = dict(re.findall(r"--([\w-]+) (\S+?)`?[ ,`]", line + " "))
    for f in _cli_fields(PropagationConfig):
        want = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        assert documented[flag(f.name)[2:]] == want, f.name
    assert set(documented) == {flag(f.name)[2:] for f in _cli_fields(PropagationConfig)}
    assert "{" + ",".join(BACKENDS) + "}" in readme


def test_precision_names_come_from_the_config():
    args = build_parser().parse_args(["export", "mobilenetv2", "--output", "o", "--precision", "fp16"])
    assert args.precision == "fp16" and args.precision in PRECISIONS
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "mobilenetv2", "--output", "o", "--precision", "fp8"])


def test_bad_values_name_the_flag_and_its_range():
    args = _parse("track", "--memory", "-1", "--temperature", "0")
    with pytest.raises(InputError) as info:
        session_config_from_args(args)
    text = str(info.value)
    assert "--memory must be an integer >= 0, got -1" in text and "--temperature must be a number > 0" in text
    assert "PropagationConfig(" not in text
    args = _parse("track", "--seed", "-2")
    with pytest.raises(InputError, match="--seed must be an integer >= 0"):
        session_config_from_args(args)


def test_no_module_reads_another_modules_private_attributes():
    """``x._name`` is allowed on self, cls, super() and the module's own classes and functions."""
    hits = []
    files = list((ROOT / "diffvos").rglob("*.py")) + list((ROOT / "tests").glob("*.py")) + \
        list((ROOT / "samples").rglob("*.py"))
    for path in files:
        source = path.read_text()
        tree = ast.parse(source)
        local = {n.name for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            base = node.value
            if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in local):
                continue
            if isinstance(base, ast.Call) and getattr(base.func, "id", None) == "super":
                continue
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert hits == []
