"""Start and stop the stock ``tritonserver`` that ships inside the ``nvidia-pytriton`` wheel.

PyTriton is used only as the package that carries the binary (no ``import pytriton``): its own
Python API has no sequence batcher and fails a whole batch when one request fails, while the
stock server with the Python backend gives per-stream sequences, idle expiry and per-request
errors (README, "Serving and scale-out"). Preparing the server process, as measured:

* a private backend folder: the Python backend looks for its stub only beside
  ``libtriton_python.so``, and the wheel keeps one stub per Python version elsewhere;
* ``LD_LIBRARY_PATH``: this interpreter's ``LIBDIR`` first (the stub links ``libpython3.X.so``
  and would otherwise load the system's, a different patch release), then the wheel's libraries;
* ``PATH``: this environment's ``bin`` first, so the stub's embedded Python uses this venv;
* ports: bound on 127.0.0.1 by default; ``tritonserver`` exits at once on a port in use, so a
  start with chosen-free ports retries on new ones;
* readiness: the *model's* ready endpoint, ``/v2/models/<name>/ready``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from diffvos.errors import DiffvosError
from diffvos.serve.protocol import MODEL_NAME

INSTALL_HINT = "pip install --no-deps nvidia-pytriton  (the wheel that ships tritonserver; see README)"
_GIVEN: set[int] = set()


class ServerError(DiffvosError):
    """tritonserver is missing, cannot start, or stopped."""


def triton_dist() -> Path:
    """The ``tritonserver`` folder inside the installed nvidia-pytriton wheel (not imported)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"the Triton server binary is not installed: {INSTALL_HINT}")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary in {dist}: reinstall with {INSTALL_HINT}")
    return dist


def prepare_backends(dst: Path, dist: Path | None = None) -> Path:
    """A backend folder with the Python backend and the stub for this interpreter's version."""
    dist = dist or triton_dist()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").iterdir())
        raise ServerError(f"the Triton wheel has no Python-backend stub for Python {version} (it has {', '.join(have)})")
    py = dst / "python"
    py.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(dist / "backends" / "python" / name, py / name)
    shutil.copy2(stub, py / "triton_python_backend_stub")
    return dst


def server_env(dist: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server process's environment (see the module docstring)."""
    dist = dist or triton_dist()
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        print(f"diffvos: this Python ({sys.executable}) has no shared libpython; the Triton stub will load the "
              "system's libpython, which must be the same minor version", file=sys.stderr)
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_ports(n: int, low: int = 20000) -> list[int]:
    """``n`` distinct ports free on this host, below the ephemeral range (where outgoing
    connections take theirs) and at random (so parallel runs rarely pick the same). Free now
    only: the server start retries on a clash."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(1000):
            if len(ports) == n:
                break
            port = rng.randint(low, ephemeral - 1)
            if port in _GIVEN or port in ports:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                s.close()
                continue
            held.append(s)  # held until all are chosen, so they are distinct
            ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) < n:
        raise ServerError(f"could not find {n} free ports in {low}..{ephemeral - 1}")
    _GIVEN.update(ports)
    return ports


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started the server dies (Linux), so a killed
    launcher or test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Ports:
    http: int
    grpc: int
    metrics: int


@dataclass
class TritonServer:
    """One ``tritonserver`` process on a model repository; a context manager.

    ``ports``: fixed ports (no retry), or None to pick free ones (retried on a clash).
    """

    repository: Path
    model: str = MODEL_NAME
    host: str = "127.0.0.1"
    ports: Ports | None = None
    log_file: Path | None = None  # default: a file in the server's temporary folder
    exit_timeout_s: int = 5
    start_timeout_s: float = 120.0
    tries: int = 3
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)

    def command(self, ports: Ports, backends: Path, dist: Path) -> list[str]:
        return [
            str(dist / "bin" / "tritonserver"), f"--model-repository={self.repository}",
            f"--backend-directory={backends}", f"--cache-directory={dist / 'caches'}",
            f"--http-address={self.host}", f"--http-port={ports.http}",
            f"--grpc-address={self.host}", f"--grpc-port={ports.grpc}",
            f"--metrics-address={self.host}", f"--metrics-port={ports.metrics}",
            "--disable-auto-complete-config", f"--exit-timeout-secs={self.exit_timeout_s}",
            "--allow-gpu-metrics=false", "--strict-readiness=true", *self.extra_args,
        ]

    @property
    def url(self) -> str:
        return f"{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    def start(self) -> TritonServer:
        dist = triton_dist()
        self._tmp = Path(tempfile.mkdtemp(prefix="diffvos-triton-"))
        try:
            backends = prepare_backends(self._tmp / "backends", dist)
            env = server_env(dist)
            fixed = self.ports is not None
            last = ""
            for _ in range(1 if fixed else self.tries):
                ports = self.ports if fixed else Ports(*free_ports(3))
                log = self.log_file or self._tmp / f"tritonserver-{ports.http}.log"
                with open(log, "wb") as fh:
                    self.process = subprocess.Popen(self.command(ports, backends, dist), env=env, stdout=fh,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    start_new_session=True, preexec_fn=_die_with_parent)
                self.ports, self.log_path = ports, log
                state = self._wait_ready()
                if state == "ready":
                    return self
                last = self.log_tail()
                self._terminate()
                if state != "port":
                    break
                if not fixed:
                    self.ports = None
            raise ServerError(f"tritonserver did not become ready: {last.strip()[-1500:]}")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> str:
        """'ready', 'port' (an address in use: retry elsewhere) or 'failed'."""
        url = f"http://{self.host}:{self.ports.http}/v2/models/{self.model}/ready"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return "port" if "already in use" in self.log_tail() else "failed"
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return "ready"
            time.sleep(0.1)
        return "failed"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    def _terminate(self) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(self.exit_timeout_s + 10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def request_stop(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting: safe in a signal handler, while
        another frame waits for the process."""
        p = self.process
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after its exit timeout) and remove its files."""
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def wait(self) -> int:
        return self.process.wait() if self.process else 0

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
