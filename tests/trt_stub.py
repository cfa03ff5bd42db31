"""Stand-in NVIDIA libraries that let the *real* TensorRT Python bindings import without a GPU.

PyPI's ``tensorrt-cuXX-bindings`` wheels hold ``tensorrt_bindings/tensorrt.so`` (about 5 MB), a
pybind11 module linked against ``libnvinfer.so.N``, ``libnvonnxparser.so.N`` and
``libnvinfer_plugin.so.N`` (the multi-GB ``-libs`` wheels, or JetPack's apt packages). This module
reads which of the module's dynamic symbols nothing in the running process provides, writes a C
file that defines each of them (functions return NULL / 0; ``getInferLibVersion`` returns the
bindings' own version), compiles one shared library per missing NVIDIA soname with gcc and loads
them with ``RTLD_GLOBAL``. Afterwards ``import tensorrt_bindings`` (or ``tensorrt``, aliased) works in
this process, and every factory (``trt.Builder``, ``trt.Runtime``, ``trt.OnnxParser``...) fails the
way real libnvinfer fails when CUDA cannot start: the factory returns NULL.

Needs: gcc and binutils' ``readelf``. Linux/ELF only. Usage::

    info = load_stub_tensorrt(Path(tmpdir))          # finds tensorrt_bindings on sys.path
    trt = info.module                                 # the real bindings module

The module is *not* aliased as ``tensorrt`` process-wide (tests that check the "TensorRT not
installed" path must keep seeing that): a test fixture puts it in ``sys.modules["tensorrt"]``
for its own duration. One process can hold only one bindings version; test another one in a
subprocess (:func:`subprocess_env`).

Nothing here is NVIDIA code; it only reads the symbol table of the installed bindings.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# sonames we are willing to fake; anything else missing is an error (not ours to invent)
FAKE_SONAME = re.compile(r"^lib(nvinfer|nvinfer_plugin|nvonnxparser|nvparsers|nvinfer_lean|nvinfer_dispatch"
                         r"|nvinfer_vc_plugin|cudart|cudnn|cublas|cublasLt)\.so(\.\d+)*$")
# which library a symbol belongs to, by name (C names and Itanium-mangled C++ names alike)
OWNER_RULES = [
    (re.compile(r"NvOnnxParser|nvonnxparser", re.I), "libnvonnxparser"),
    (re.compile(r"initLibNvInferPlugins|getInferPluginVersion|nvinfer1.*plugin|6plugin", re.I), "libnvinfer_plugin"),
    (re.compile(r"^cudnn"), "libcudnn"),
    (re.compile(r"^cublasLt"), "libcublasLt"),
    (re.compile(r"^cublas"), "libcublas"),
    (re.compile(r"^cuda"), "libcudart"),
]
DEFAULT_OWNER = "libnvinfer"


@dataclass
class DynSym:
    name: str      # exact (possibly mangled) name, without the @VERSION suffix
    kind: str      # FUNC, OBJECT, NOTYPE...
    bind: str      # GLOBAL, WEAK
    size: int


@dataclass
class StubInfo:
    module_path: Path                 # tensorrt.so of the bindings
    version: str                      # the bindings' __version__ (read from __init__.py)
    needed: list[str]                 # DT_NEEDED of the module
    faked: dict[str, list[str]]       # soname -> symbols defined in its stub
    libs: list[Path] = field(default_factory=list)
    c_source: Path | None = None
    build_seconds: float = 0.0
    module: object | None = None


def dynamic_symbols(so: Path) -> list[DynSym]:
    """Undefined entries of the .dynsym table, via ``readelf --dyn-syms -W``."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(so)], check=True, capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        # Num: Value Size Type Bind Vis Ndx Name [(version index)]
        if len(parts) < 8 or not parts[0].endswith(":") or parts[6] != "UND":
            continue
        name = parts[7]
        if "@" in name:  # versioned (GLIBC_2.x, GLIBCXX_3.4...): the system provides it
            continue
        size = int(parts[2], 0) if parts[2].isdigit() or parts[2].startswith("0x") else 0
        syms.append(DynSym(name, parts[3], parts[4], size))
    return syms


def needed_libs(so: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", "-W", str(so)], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _resolvable(name: str) -> bool:
    """Whether something already loaded (the interpreter, libc, libstdc++...) defines ``name``."""
    try:
        getattr(ctypes.CDLL(None), name)
        return True
    except AttributeError:
        return False


def _loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
        return True
    except OSError:
        return False


def _owner(name: str) -> str:
    for rule, owner in OWNER_RULES:
        if rule.search(name):
            return owner
    return DEFAULT_OWNER


def encode_version(version: str) -> int:
    """NV_TENSORRT_VERSION as getInferLibVersion() returns it: major*10000 + minor*100 + patch (TRT >= 10)."""
    major, minor, patch = (list(map(int, re.findall(r"\d+", version))) + [0, 0, 0])[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


# Factories whose real signatures are known (NvInfer.h / NvOnnxParser.h): name -> (C params, index of the
# ILogger* among them or -1). The stand-ins record the call (which factory, the NV_TENSORRT_VERSION the
# bindings passed) and, for the builder and runtime, log through the caller's ILogger the way real
# libnvinfer reports a CUDA failure before returning NULL.
FACTORIES = {
    "createInferBuilder_INTERNAL": ("void *logger, int version", 0),
    "createInferRuntime_INTERNAL": ("void *logger, int version", 0),
    "createInferRefitter_INTERNAL": ("void *engine, void *logger, int version", -1),
    "createNvOnnxParser_INTERNAL": ("void *network, void *logger, int version", -1),
    "createNvOnnxParserRefitter_INTERNAL": ("void *refitter, void *logger, int version", -1),
}
DEFAULT_MESSAGE = ("CUDA initialization failure with error: 100. Please check your CUDA installation "
                   "(trt_stub: stand-in libnvinfer, no GPU)")

_PRELUDE = r"""/* generated by trt_stub.py: stand-ins that fail like libnvinfer without CUDA */
#define API __attribute__((visibility("default"), used))
typedef void (*trt_stub_log_fn)(void *self, int severity, const char *msg);
/* ILogger::log(Severity, const char*) noexcept in the Itanium vtable: slot 0 up to TensorRT 10; from 11.0
   ILogger is an IVersionedInterface (getAPILanguage, getInterfaceInfo, two destructors come first): slot 4 */
#define TRT_STUB_LOG_SLOT %d
static void trt_stub_log(void *logger, int severity, const char *msg) {
    if (logger && msg && msg[0]) { trt_stub_log_fn f = (*(trt_stub_log_fn **)logger)[TRT_STUB_LOG_SLOT]; f(logger, severity, msg); }
}
"""
_STATE = r"""API int trt_stub_calls = 0;            /* factory calls so far */
API int trt_stub_last_version = 0;     /* NV_TENSORRT_VERSION the bindings passed */
API char trt_stub_last_factory[64] = "";
API int trt_stub_severity = 2;         /* ILogger::Severity::kWARNING, as TensorRT >= 8.6 logs it */
API char trt_stub_message[512] = "%s";
API void trt_stub_record(const char *name, int version) {
    int i = 0;
    trt_stub_calls++; trt_stub_last_version = version;
    for (; name[i] && i < 63; i++) trt_stub_last_factory[i] = name[i];
    trt_stub_last_factory[i] = 0;
}
"""


def logger_log_slot(version: str) -> int:
    """vtable index of ILogger::log for the bindings' TensorRT major (checked against 10.3-10.16, 11.0-11.4)."""
    return 4 if int(re.findall(r"\d+", version)[0]) >= 11 else 0


def c_source(symbols: list[DynSym], version: str, with_state: bool = False) -> str:
    """One C translation unit defining every symbol under its exact (possibly mangled) name."""
    lines = [_PRELUDE % logger_log_slot(version)]
    if with_state:
        lines.append(_STATE % DEFAULT_MESSAGE.replace('"', "'"))
    else:
        lines.append("extern int trt_stub_severity; extern char trt_stub_message[];\n"
                     "void trt_stub_record(const char *name, int version) __attribute__((weak));\n")
    for i, s in enumerate(symbols):
        label = s.name.replace("\\", "\\\\").replace('"', '\\"')
        if s.kind == "OBJECT":  # data (vtable, typeinfo, global): zero-filled storage
            size = max(s.size, 64)
            lines.append(f'API char obj_{i}[{size}] __asm__("{label}") __attribute__((aligned(16))) = {{0}};')
        elif s.name in FACTORIES:
            params, log_arg = FACTORIES[s.name]
            logger = params.split(",")[log_arg].split("*")[-1].strip() if log_arg >= 0 else None
            body = f'if (trt_stub_record) trt_stub_record("{label}", version); '
            if logger:
                body += f"trt_stub_log({logger}, trt_stub_severity, trt_stub_message); "
            lines.append(f'API void *fn_{i}({params}) __asm__("{label}");')
            lines.append(f"API void *fn_{i}({params}) {{ {body}return 0; }}")
        elif s.name == "getInferLibVersion":
            lines.append(f'API int fn_{i}(void) __asm__("{label}");')
            lines.append(f"API int fn_{i}(void) {{ return {encode_version(version)}; }}")
        else:  # other functions: NULL (a pointer-returning caller sees nullptr, an int caller 0)
            lines.append(f'API void *fn_{i}(void) __asm__("{label}");')
            lines.append(f"API void *fn_{i}(void) {{ return 0; }}")
    return "\n".join(lines) + "\n"


def find_bindings(module: str = "tensorrt_bindings") -> Path:
    """Path of the compiled module without importing it (importing would fail before the stubs)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{module} is not installed (pip install tensorrt-cu12-bindings)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(pkg.glob("tensorrt*.so"))
    if not found:
        raise FileNotFoundError(f"no tensorrt*.so in {pkg}")
    return found[0]


def find_bindings_in(folder: Path, module: str = "tensorrt_bindings") -> Path:
    """The compiled module of bindings installed in ``folder`` (e.g. by ``pip install --target``)."""
    found = sorted((Path(folder) / module).glob("tensorrt*.so"))
    if not found:
        raise FileNotFoundError(f"no {module}/tensorrt*.so in {folder}")
    return found[0]


def bindings_version(module_path: Path) -> str:
    init = module_path.parent / "__init__.py"
    text = init.read_text() if init.is_file() else ""
    m = re.search(r'^__version__\s*=\s*["\']([^"\']+)', text, re.M)
    return m.group(1) if m else "0.0.0"


def build_stub_libs(module_path: Path, out_dir: Path, cc: str | None = None) -> StubInfo:
    """Write and compile the stand-in libraries for one bindings module into ``out_dir``."""
    t0 = time.perf_counter()
    cc = cc or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler (gcc/cc) to build the TensorRT stand-in libraries")
    out_dir.mkdir(parents=True, exist_ok=True)
    version = bindings_version(module_path)
    needed = needed_libs(module_path)
    fake_sonames = [n for n in needed if FAKE_SONAME.match(n) and not _loadable(n)]
    by_base = {n.split(".so")[0]: n for n in fake_sonames}
    missing = [s for s in dynamic_symbols(module_path) if s.bind != "WEAK" and not _resolvable(s.name)]
    groups: dict[str, list[DynSym]] = {n: [] for n in fake_sonames}
    for s in missing:
        soname = by_base.get(_owner(s.name)) or by_base.get(DEFAULT_OWNER) or (fake_sonames[0] if fake_sonames else None)
        if soname is None:
            raise RuntimeError(f"{module_path} needs {s.name}, but none of its libraries is one we may fake: {needed}")
        groups[soname].append(s)
    info = StubInfo(module_path, version, needed, {k: [s.name for s in v] for k, v in groups.items()})
    # dependency order: libnvinfer first, the parser and plugins (which link it in reality) after
    for soname in sorted(groups, key=lambda n: (not n.startswith("libnvinfer.so"), n)):
        src = out_dir / (soname.split(".so")[0] + "_stub.c")
        first = not info.libs  # libnvinfer (sorted first) owns the shared state; the others link to it
        src.write_text(c_source(groups[soname], version, with_state=first))
        lib = out_dir / soname
        link = [] if first else [f"-L{out_dir}", f"-l:{info.libs[0].name}"]
        subprocess.run([cc, "-shared", "-fPIC", "-O0", "-w", f"-Wl,-soname,{soname}", "-o", str(lib), str(src), *link],
                       check=True, capture_output=True, text=True)
        info.libs.append(lib)
        info.c_source = info.c_source or src
    info.build_seconds = time.perf_counter() - t0
    return info


class StubState:
    """The stand-in libnvinfer's record of factory calls, and the message it logs (ctypes view)."""

    def __init__(self, info: StubInfo) -> None:
        self.lib = ctypes.CDLL(str(info.libs[0]))  # already loaded: same handle, same globals

    @property
    def calls(self) -> int:
        return ctypes.c_int.in_dll(self.lib, "trt_stub_calls").value

    @property
    def last_version(self) -> int:
        return ctypes.c_int.in_dll(self.lib, "trt_stub_last_version").value

    @property
    def last_factory(self) -> str:
        return (ctypes.c_char * 64).in_dll(self.lib, "trt_stub_last_factory").value.decode()

    def set_message(self, message: str, severity: int = 2) -> None:
        """What the builder/runtime factories log before returning NULL ('' logs nothing)."""
        raw = message.encode()[:511]
        buf = (ctypes.c_char * 512).in_dll(self.lib, "trt_stub_message")
        ctypes.memmove(buf, raw + b"\0", len(raw) + 1)
        ctypes.c_int.in_dll(self.lib, "trt_stub_severity").value = severity


def preload(libs: list[Path]) -> None:
    """dlopen each stand-in with RTLD_GLOBAL: the loader then satisfies the module's DT_NEEDED
    entries by soname (already-loaded objects are matched on SONAME), no LD_LIBRARY_PATH needed."""
    for lib in libs:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


def load_stub_tensorrt(out_dir: Path, module: str = "tensorrt_bindings", alias: str | None = None) -> StubInfo:
    """Build the stand-ins, preload them, import the real bindings; with ``alias``, also register
    them under that name (what the ``tensorrt-cuXX`` front package does: ``from tensorrt_bindings
    import *``)."""
    so = find_bindings(module)
    info = build_stub_libs(so, out_dir)
    preload(info.libs)
    mod = importlib.import_module(module)
    if alias and alias not in sys.modules:
        sys.modules[alias] = mod
    info.module = mod
    return info


def subprocess_env(info: StubInfo, env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process that imports the bindings against the stand-ins."""
    env = dict(os.environ if env is None else env)
    d = str(info.libs[0].parent)
    env["LD_LIBRARY_PATH"] = d + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


if __name__ == "__main__":  # python trt_stub.py OUT_DIR  -> builds, imports, prints a summary
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "trt_stub_out")
    t = time.perf_counter()
    i = load_stub_tensorrt(out)
    print(f"bindings {i.version} at {i.module_path}")
    print(f"needed: {i.needed}")
    for soname, names in i.faked.items():
        print(f"  {soname}: {names}")
    print(f"built in {i.build_seconds:.2f}s, build+import {time.perf_counter() - t:.2f}s")
