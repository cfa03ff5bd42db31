"""Build the C ABI: ``libdiffvos.so`` implementing ``diffvos.h`` by embedding this Python runtime.

One command (needs cffi, a C compiler and the Python headers)::

    python -m diffvos.runtime.capi.build --out build/capi

It writes ``build/capi/libdiffvos.so`` and a copy of ``diffvos.h``. The library uses cffi's
embedding mode: every public function is a small C wrapper that makes sure the embedded
interpreter is running (started once, with this environment's site-packages on its path, never
calling exit() on failure), then forwards to its Python implementation in ``bridge.py``.
The wrappers are generated from the header's prototypes, so the header is the single list of
the ABI's functions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import site
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

HEADER = Path(__file__).with_name("diffvos.h")
MODULE = "_diffvos_capi"
LIBRARY = "libdiffvos"


@dataclass
class Prototype:
    ret: str  # C return type
    name: str
    params: str  # as written in the header
    args: list[str]  # parameter names, in order


def header_section(text: str) -> str:
    """The declarations between the CFFI-BEGIN / CFFI-END markers, comments removed."""
    m = re.search(r"CFFI-BEGIN[^\n]*\n(.*)/\* CFFI-END", text, re.S)
    if not m:
        raise SystemExit(f"{HEADER}: no CFFI-BEGIN / CFFI-END section")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return re.sub(r"//[^\n]*", "", body)


def prototypes(section: str) -> list[Prototype]:
    out = []
    for m in re.finditer(r"DIFFVOS_API\s+([^;(]*?)\s*(\w+)\s*\(([^)]*)\)\s*;", section, re.S):
        ret, name, params = " ".join(m.group(1).split()), m.group(2), " ".join(m.group(3).split())
        if ret.endswith("*"):  # "const char *" + name
            ret = ret.rstrip("* ").strip() + " *"
        args = [] if params in ("", "void") else [re.findall(r"\w+", p)[-1] for p in params.split(",")]
        out.append(Prototype(ret, name, params, args))
    return out


def types_only(section: str) -> str:
    return re.sub(r"DIFFVOS_API[^;]*;", "", section)


# Functions written in C: they must answer even when the embedded Python cannot start.
C_ONLY = ("diffvos_api_version", "diffvos_status_string")


def _c_only() -> str:
    from diffvos.runtime.capi.status import STATUS_TEXT

    cases = "\n".join(f'    case {int(k)}: return "{v}";' for k, v in STATUS_TEXT.items())
    return (
        "DIFFVOS_API int32_t diffvos_api_version(void) { return DIFFVOS_API_VERSION; }\n"
        "DIFFVOS_API const char *diffvos_status_string(int32_t status)\n{\n    switch (status) {\n"
        f"{cases}\n"
        '    default: return "unknown status";\n    }\n}\n'
    )


def _py_ret(ret: str) -> str:
    return "int" if ret == "diffvos_status" else ret


def cdef_text(protos: list[Prototype], types: str) -> str:
    lines = [types]
    lines.append('extern "Python" int dvpy_ping(void);')
    for p in protos:
        if p.name not in C_ONLY:
            lines.append(f'extern "Python" {_py_ret(p.ret)} dvpy_{p.name}({p.params});')
    return "\n".join(lines)


def c_source(protos: list[Prototype], home: str, site_dirs: list[str]) -> str:
    """The C side: interpreter start-up and one wrapper per public function."""
    paths = ", ".join(repr(p) for p in site_dirs)
    site_code = (
        "import os, site, sys\n"
        "if not getattr(sys, 'argv', None): sys.argv = ['libdiffvos']\n"
        "for p in [q for q in os.environ.get('DIFFVOS_PYTHONPATH', '').split(os.pathsep) if q] + "
        f"[{paths}]:\n"
        "    site.addsitedir(p)\n"
    )
    c_string = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'  # noqa: E731
    lines = [
        "#include <pthread.h>",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        '#include "diffvos.h"',
        f"static const char *dv_home = {c_string(home)};",
        f"static const char *dv_site_code = {c_string(site_code)};",
        "static pthread_once_t dv_once = PTHREAD_ONCE_INIT;",
        "static int dv_ok = 0;",
        "static char dv_error[2048] = \"\";",
        "static int dvpy_ping(void);",
    ]
    for p in protos:
        if p.name not in C_ONLY:
            lines.append(f"static {_py_ret(p.ret)} dvpy_{p.name}({p.params});")
    lines.append(r"""
static void dv_init(void)
{
    if (!Py_IsInitialized()) {
        /* start the interpreter ourselves: PyConfig reports failures instead of exiting */
        PyConfig config;
        PyStatus st;
        const char *home = getenv("DIFFVOS_PYTHONHOME");
        if (home == NULL || *home == '\0') home = dv_home;
        PyConfig_InitPythonConfig(&config);
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        st = PyConfig_SetBytesString(&config, &config.home, home);
        if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(st)) {
            snprintf(dv_error, sizeof dv_error,
                     "diffvos: the embedded Python runtime (home %s) could not start: %s%s%s", home,
                     st.func ? st.func : "", st.func ? ": " : "", st.err_msg ? st.err_msg : "exit requested");
            return;
        }
        if (PyRun_SimpleString(dv_site_code) != 0) {
            PyEval_SaveThread();
            snprintf(dv_error, sizeof dv_error, "diffvos: could not set the embedded Python's path");
            return;
        }
        PyEval_SaveThread(); /* release the GIL: every call takes it when it needs it */
    }
    if (dvpy_ping() != 1) {
        snprintf(dv_error, sizeof dv_error,
                 "diffvos: the library's Python side failed to load (traceback on stderr); "
                 "is diffvos installed in the environment the library was built in, or on DIFFVOS_PYTHONPATH?");
        return;
    }
    dv_ok = 1;
}

static int dv_start(void)
{
    pthread_once(&dv_once, dv_init);
    return dv_ok;
}
""")
    lines.append(_c_only())
    for p in protos:
        if p.name in C_ONLY:
            continue
        call = f"dvpy_{p.name}({', '.join(p.args)})"
        if p.ret == "diffvos_status":
            body = f"if (!dv_start()) return DIFFVOS_ERR_RUNTIME;\n    return (diffvos_status){call};"
        elif p.ret == "const char *":
            body = (f"const char *r;\n    if (!dv_start()) return dv_error;\n    r = {call};\n"
                    '    return r ? r : "diffvos: internal error (no message)";')
        else:
            body = f"if (!dv_start()) return -1;\n    return {call};"
        lines.append(f"DIFFVOS_API {p.ret} {p.name}({p.params})\n{{\n    {body}\n}}\n")
    return "\n".join(lines)


INIT_CODE = f"""
from {MODULE} import ffi, lib
from diffvos.runtime.capi import bridge
bridge.install(ffi)
"""


def site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    dirs += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [str(Path(d).resolve()) for d in dirs if Path(d).is_dir()]


def check_toolchain() -> str | None:
    """Why the library cannot be built here, or None."""
    try:
        import cffi  # noqa: F401
    except ImportError:
        return "cffi is not installed (pip install cffi)"
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").is_file():
        return f"the Python headers are missing (no Python.h in {include}); install python3-dev"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    shared = f"libpython{sysconfig.get_config_var('LDVERSION') or sysconfig.get_python_version()}.so"
    if not (Path(libdir) / shared).exists():
        return f"no shared Python library ({shared} is not in {libdir}); use a Python built with --enable-shared"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not (shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler found (cc / gcc)"
    return None


def build(out_dir: str | Path, verbose: bool = False) -> Path:
    """Compile libdiffvos.so into ``out_dir`` (with a copy of diffvos.h); returns its path."""
    import cffi

    problem = check_toolchain()
    if problem:
        raise SystemExit(f"cannot build {LIBRARY}: {problem}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    text = HEADER.read_text("utf-8")
    section = header_section(text)
    protos = prototypes(section)
    ffi = cffi.FFI()
    ffi.cdef(cdef_text(protos, types_only(section)))
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ffi.set_source(
        MODULE,
        c_source(protos, sys.base_prefix, site_dirs()),
        include_dirs=[str(HEADER.parent)],
        extra_compile_args=["-fvisibility=hidden"],
        extra_link_args=[f"-Wl,-rpath,{libdir}"] if libdir else [],
        libraries=["pthread"],
    )
    ffi.embedding_init_code(INIT_CODE)
    with tempfile.TemporaryDirectory(prefix="diffvos-capi-") as tmp:
        built = Path(ffi.compile(tmpdir=tmp, target=f"{LIBRARY}.*", verbose=verbose))
        target = out_dir / built.name
        shutil.copy2(built, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
    shutil.copy2(HEADER, out_dir / HEADER.name)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffvos.runtime.capi.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/capi", help="output folder (default build/capi)")
    p.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = p.parse_args(argv)
    lib = build(args.out, verbose=args.verbose)
    print(f"built {lib}\nheader {lib.parent / HEADER.name}\n"
          f"link: cc app.c -I{lib.parent} -L{lib.parent} -ldiffvos -Wl,-rpath,{lib.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
