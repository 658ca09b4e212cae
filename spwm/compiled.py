# -*- test-case-name: tests.test_compiled -*-
"""
The modules of the work a call takes in each half (L{MODULES}), optionally
compiled to C with mypyc (C{spwm compile}); and the guard that keeps a
compiled module from running when its source has changed since it was
built.

mypyc compiles type-checked Python to C extension modules that do what
the source does (data classes become C structures, calls between compiled
functions C calls). SPWM's source stays the program: a plain install runs
it as Python, and C{spwm compile} builds L{MODULES} beside their sources,
in the package directory Python imports C{spwm} from (a virtual
environment's C{site-packages}, or a checkout). It needs mypy and its
zope.interface plugin (C{pip install mypy mypy-zope}), a C compiler and
Python's C headers. C{spwm compile
--remove} takes the built files away again.

A built module is recorded in L{MANIFEST} with the SHA-256 of the source it
was built from. Python would import the built module in preference to its
source, whatever the source says now; so at every C{import spwm}, L{guard}
reads the manifest and, for a module whose source no longer matches (an
upgrade installed over it, an edit in a checkout) or whose built files are
gone, has Python import the source instead, and says so in one warning.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from typing import Any, Sequence

__all__ = ["MANIFEST", "MODULES", "BuildError", "CompiledStaleWarning", "build", "check_tools", "guard", "remove", "status"]

#: The modules built by C{spwm compile}: the SIP parser and header reads,
#: the SDP parser, the SIP rewrites and checks, the dialog, flow, ringing
#: and BYE tables, the proxies' actions, the media negotiation and the
#: media manager, the tunnel's framing; and the SIP proxy cores, their
#: authorisation, the SIP runners, the tunnel connection's core, the
#: session's paths and carrier, its resumption, the call quality figures
#: and the clocks (C{docs/performance.md}). Each must type-check under
#: mypy with the zope.interface plugin only, use data classes rather than
#: attrs ones where it is hot, mark a class that derives from a Python
#: class (Twisted's) with L{spwm._mypyc.mypyc_attr}, and hold to its
#: types at run time (mypyc checks them where Python does not).
MODULES = (
    "spwm.sip.message",
    "spwm.sip.uri",
    "spwm.sdp",
    "spwm.sip.rewrite",
    "spwm.sip.checks",
    "spwm.sip.dialogs",
    "spwm.sip.flows",
    "spwm.sip.actions",
    "spwm.sip.byes",
    "spwm.sip.ringing",
    "spwm.media.negotiation",
    "spwm.media.manager",
    "spwm.tunnel.frames",
    "spwm.tunnel.decoder",
    "spwm.sip.agent_proxy",
    "spwm.sip.contact_proxy",
    "spwm.sip.authz",
    "spwm.sip.transport",
    "spwm.tunnel.connection",
    "spwm.session.paths",
    "spwm.session.carrier",
    "spwm.security.resume",
    "spwm.media.quality",
    "spwm.clock",
)

#: The record of a build, in the package directory.
MANIFEST = "_compiled.json"

#: The most seconds a build may take.
BUILD_TIMEOUT = 900.0


class CompiledStaleWarning(UserWarning):
    """
    A compiled module's source changed since it was built: the source runs.
    """


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _source(package_dir: str, module: str) -> str:
    # spwm.sip.message -> <package_dir>/sip/message.py
    return os.path.join(package_dir, *module.split(".")[1:]) + ".py"


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _read_manifest(package_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(package_dir, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("modules"), dict):
        # which modules were built is not known: none runs compiled
        return {"modules": dict.fromkeys(MODULES), "files": [], "unreadable": True}
    return manifest


def stale_modules(package_dir: str, manifest: dict[str, Any]) -> list[str]:
    """
    @return: the modules of C{manifest} that must not run compiled: their
        source differs from the one they were built from, or a file of
        the build is missing (then all of them: they share a runtime
        library).
    """
    modules = manifest["modules"]
    root = os.path.dirname(package_dir)
    files = manifest.get("files") or []
    if manifest.get("unreadable") or any(not os.path.exists(os.path.join(root, f)) for f in files):
        return sorted(modules)
    return sorted(m for m, digest in modules.items() if _digest(_source(package_dir, m)) != digest)


class _SourceFinder:
    """
    A finder (first on C{sys.meta_path}) that gives the source of the
    named modules, so that their built files are not imported.
    """

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        source = self.sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, source, loader=importlib.machinery.SourceFileLoader(fullname, source)
        )


def guard(package_dir: str | None = None, meta_path: list[Any] | None = None) -> list[str]:
    """
    Keep stale compiled modules from running (see the module): called by
    C{spwm/__init__.py} before any of them is imported.

    @return: the modules whose source will run instead of their build.
    """
    package_dir = os.path.abspath(package_dir or _package_dir())
    manifest = _read_manifest(package_dir)
    if manifest is None:
        return []
    stale = stale_modules(package_dir, manifest)
    if stale:
        finders = sys.meta_path if meta_path is None else meta_path
        finders.insert(0, _SourceFinder({m: _source(package_dir, m) for m in stale}))
        what = "the source of " + ", ".join(stale) + (" changed since it was" if len(stale) == 1 else " changed since they were")
        warnings.warn(
            CompiledStaleWarning(
                f"spwm: {what} compiled, so the source runs; 'spwm compile' builds again,"
                " 'spwm compile --remove' removes the build"
            ),
            stacklevel=2,
        )
    return stale


def status(package_dir: str | None = None) -> list[tuple[str, str]]:
    """
    @return: each of L{MODULES} with what runs: C{"compiled"}, C{"source"}
        (not built), or C{"source (stale build)"}.
    """
    package_dir = os.path.abspath(package_dir or _package_dir())
    manifest = _read_manifest(package_dir) or {"modules": {}}
    stale = set(stale_modules(package_dir, manifest))
    built = manifest.get("modules") or {}
    out = []
    for module in MODULES:
        if module in stale:
            out.append((module, "source (stale build)"))
        elif module in built:
            out.append((module, "compiled"))
        else:
            out.append((module, "source"))
    return out


class BuildError(Exception):
    """
    The modules could not be built; the message says why, in one line.
    """


def _missing_tools() -> str | None:
    import shutil
    import sysconfig

    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy: python3 -m pip install mypy mypy-zope)"
    if importlib.util.find_spec("mypy_zope") is None:
        return "mypy's zope.interface plugin is not installed (python3 -m pip install mypy-zope)"
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"Python's C headers are not installed (no Python.h in {include}; Debian: apt-get install python3-dev)"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc} not found; Debian: apt-get install gcc)"
    return None


#: What the build's Python process runs (in the directory above the
#: package): mypyc's own setuptools build, in place, its C files and
#: objects in a temporary directory; a C file per module (C{multi_file}):
#: the C compiler takes half the time it takes over one file of them all,
#: for the same instructions per call (C{docs/performance.md}).
_BUILD_SCRIPT = """
import sys
from setuptools import setup
from mypyc.build import mypycify
tmp, config = sys.argv[1], sys.argv[2]
paths = sys.argv[3:]
setup(
    name="spwm-compiled",
    ext_modules=mypycify(
        ["--config-file", config, "--cache-dir", tmp + "/cache", *paths], opt_level="3", multi_file=True, target_dir=tmp + "/c"
    ),
    script_args=["build_ext", "--inplace", "--build-temp", tmp + "/build", "--build-lib", tmp + "/lib"],
)
"""


def check_tools() -> None:
    """
    @raise BuildError: a tool the build needs is missing (which, and how
        to get it).
    """
    missing = _missing_tools()
    if missing is not None:
        raise BuildError(missing)


def build(package_dir: str | None = None, modules: Sequence[str] = MODULES) -> list[str]:
    """
    Build C{modules} and put them beside their sources, and write the
    manifest (a build before it is removed first). The build works on a
    copy of the package in a temporary directory: mypy, which mypyc runs
    first, must not take the other modules of the directory the package
    is installed in (a virtual environment's C{site-packages}) for the
    project's own.

    @return: the files put in place, relative to the directory above the
        package.
    @raise BuildError: a tool is missing, or the build failed.
    """
    import shutil
    import subprocess
    import tempfile

    package_dir = os.path.abspath(package_dir or _package_dir())
    check_tools()
    root = os.path.dirname(package_dir)
    for where in (root, *{os.path.dirname(_source(package_dir, m)) for m in modules}):
        if not os.access(where, os.W_OK):
            raise BuildError(f"cannot write to {where} (run as the user that installed spwm)")
    # (unlinked, not overwritten: a half that runs keeps its copy)
    remove(package_dir)
    with tempfile.TemporaryDirectory(prefix="spwm-compile-") as tmp:
        src = os.path.join(tmp, "src")
        shutil.copytree(
            package_dir,
            os.path.join(src, "spwm"),
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", MANIFEST),
        )
        # mypy with the zope.interface plugin, as the project's own
        # checks run it (Twisted's interfaces type the reactor and the
        # transports); the modules the built ones import are read for
        # their types, and what it would say of them is not this
        # build's business ("silent")
        config = os.path.join(tmp, "mypy.ini")
        with open(config, "w", encoding="utf-8") as f:
            f.write("[mypy]\nfollow_imports = silent\nplugins = mypy_zope:plugin\n")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)
        sources = [os.path.relpath(_source(os.path.join(src, "spwm"), m), src) for m in modules]
        try:
            done = subprocess.run(
                [sys.executable, "-c", _BUILD_SCRIPT, tmp, config, *sources],
                cwd=src,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise BuildError(f"the build took longer than {BUILD_TIMEOUT:g} s") from None
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if "error" in line.lower()]
            raise BuildError("the build failed: " + (lines[-1].strip() if lines else f"exit status {done.returncode}"))
        made = sorted(_built_files(src))
        placed: list[str] = []
        try:
            for path in made:
                shutil.copyfile(os.path.join(src, path), os.path.join(root, path))
                placed.append(path)
        except OSError as e:
            for path in placed:
                _unlink(os.path.join(root, path))
            raise BuildError(f"the built files could not be put in place: {e}") from None
    manifest = {
        "modules": {m: _digest(_source(package_dir, m)) for m in modules},
        "files": made,
        "python": sys.version.split()[0],
    }
    with open(os.path.join(package_dir, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return made


def _built_files(root: str) -> set[str]:
    """
    The extension modules under C{root}'s C{spwm} directory and mypyc's
    runtime libraries at its top.
    """
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    found = {name for name in os.listdir(root) if name.endswith("__mypyc" + suffix)}
    for here, _, names in os.walk(os.path.join(root, "spwm")):
        found.update(os.path.relpath(os.path.join(here, n), root) for n in names if n.endswith(suffix))
    return found


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove(package_dir: str | None = None) -> list[str]:
    """
    Remove the files of the build the manifest records, and the manifest.

    @return: the files removed, relative to the directory above the package.
    """
    package_dir = os.path.abspath(package_dir or _package_dir())
    manifest = _read_manifest(package_dir)
    if manifest is None:
        return []
    root = os.path.dirname(package_dir)
    removed = []
    for path in manifest.get("files") or []:
        full = os.path.normpath(os.path.join(root, path))
        # only what the build made: inside the directory above the package
        if os.path.commonpath([root, full]) == root and os.path.exists(full):
            os.unlink(full)
            removed.append(path)
    _unlink(os.path.join(package_dir, MANIFEST))
    return removed
