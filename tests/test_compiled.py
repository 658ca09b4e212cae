"""
Tests for L{spwm.compiled}: the guard that keeps a stale build from
running, the status, the removal, and C{spwm compile} on the command line.
A real build is L{tests.integration.test_compiled_build}.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from spwm import compiled
from spwm.__main__ import main

SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


class _Package:
    """
    A package directory C{spwm} in a temporary directory, with the sources
    of L{compiled.MODULES} and, if asked, built files and a manifest.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self.root = os.path.abspath(test.mktemp())
        self.dir = os.path.join(self.root, "spwm")
        for module in compiled.MODULES:
            os.makedirs(os.path.dirname(self.source(module)), exist_ok=True)
            self.write(module, f"# {module}\n")

    def source(self, module: str) -> str:
        return os.path.join(self.dir, *module.split(".")[1:]) + ".py"

    def write(self, module: str, text: str) -> None:
        with open(self.source(module), "w") as f:
            f.write(text)

    def built(self) -> list[str]:
        """
        Make a build's files and its manifest, as L{compiled.build} does.
        """
        files = ["abc__mypyc" + SUFFIX] + [
            os.path.relpath(self.source(m), self.root)[: -len(".py")] + SUFFIX for m in compiled.MODULES
        ]
        for path in files:
            open(os.path.join(self.root, path), "wb").close()
        with open(os.path.join(self.dir, compiled.MANIFEST), "w") as f:
            json.dump({"modules": {m: _digest(self.source(m)) for m in compiled.MODULES}, "files": files}, f)
        return files


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class GuardTests(SynchronousTestCase):
    """
    L{compiled.guard}: a module whose build no longer matches its source
    is imported from its source, with one warning.
    """

    def test_nothing_built(self) -> None:
        """
        Without a manifest nothing is done.
        """
        package = _Package(self)
        finders: list[Any] = []
        self.assertEqual(compiled.guard(package.dir, finders), [])
        self.assertEqual(finders, [])
        self.assertEqual(self.flushWarnings(), [])

    def test_current_build(self) -> None:
        """
        A build that matches its sources runs: nothing is done.
        """
        package = _Package(self)
        package.built()
        finders: list[Any] = []
        self.assertEqual(compiled.guard(package.dir, finders), [])
        self.assertEqual(finders, [])
        self.assertEqual(
            compiled.status(package.dir), [(m, "compiled") for m in compiled.MODULES]
        )

    def test_changed_source(self) -> None:
        """
        A module whose source changed since its build is found as its
        source by a finder put first; the others are left to Python, and
        one warning names the module.
        """
        package = _Package(self)
        package.built()
        changed = compiled.MODULES[0]
        package.write(changed, "# edited\n")
        finders: list[Any] = ["python's own"]
        self.assertEqual(compiled.guard(package.dir, finders), [changed])
        self.assertEqual(len(finders), 2)
        spec = finders[0].find_spec(changed)
        self.assertEqual(spec.origin, package.source(changed))
        self.assertEqual(spec.loader.path, package.source(changed))
        for other in compiled.MODULES[1:]:
            self.assertIsNone(finders[0].find_spec(other))
        warnings = self.flushWarnings()
        self.assertEqual(len(warnings), 1)
        self.assertIs(warnings[0]["category"], compiled.CompiledStaleWarning)
        self.assertIn(f"the source of {changed} changed since it was compiled", warnings[0]["message"])
        self.assertEqual(
            dict(compiled.status(package.dir))[changed], "source (stale build)"
        )

    def test_missing_file(self) -> None:
        """
        A file of the build that is gone (the runtime library they share)
        makes every built module run as its source.
        """
        package = _Package(self)
        files = package.built()
        os.unlink(os.path.join(package.root, files[0]))
        finders: list[Any] = []
        self.assertEqual(compiled.guard(package.dir, finders), sorted(compiled.MODULES))
        self.assertEqual(len(self.flushWarnings()), 1)

    def test_unreadable_manifest(self) -> None:
        """
        A manifest that does not read: which modules were built is not
        known, so none of them runs compiled.
        """
        package = _Package(self)
        package.built()
        with open(os.path.join(package.dir, compiled.MANIFEST), "w") as f:
            f.write("{not json")
        finders: list[Any] = []
        self.assertEqual(compiled.guard(package.dir, finders), sorted(compiled.MODULES))
        self.flushWarnings()

    def test_this_package(self) -> None:
        """
        Without a directory, the package Python imported: one line for
        each module.
        """
        self.assertEqual([m for m, _ in compiled.status()], list(compiled.MODULES))


class RemoveTests(SynchronousTestCase):
    """
    L{compiled.remove} removes what the manifest records, and only that.
    """

    def test_remove(self) -> None:
        package = _Package(self)
        files = package.built()
        other = os.path.join(package.root, "other" + SUFFIX)
        open(other, "wb").close()
        self.assertEqual(sorted(compiled.remove(package.dir)), sorted(files))
        for path in files:
            self.assertFalse(os.path.exists(os.path.join(package.root, path)))
        self.assertFalse(os.path.exists(os.path.join(package.dir, compiled.MANIFEST)))
        self.assertTrue(os.path.exists(other))
        for module in compiled.MODULES:
            self.assertTrue(os.path.exists(package.source(module)))
        self.assertEqual(compiled.remove(package.dir), [])

    def test_outside_not_removed(self) -> None:
        """
        A manifest that names a file outside the directory above the
        package (edited, or planted) does not remove it.
        """
        package = _Package(self)
        package.built()
        outside = os.path.abspath(self.mktemp())
        open(outside, "wb").close()
        with open(os.path.join(package.dir, compiled.MANIFEST), "w") as f:
            json.dump({"modules": {}, "files": [os.path.relpath(outside, package.root)]}, f)
        self.assertEqual(compiled.remove(package.dir), [])
        self.assertTrue(os.path.exists(outside))


class CommandTests(SynchronousTestCase):
    """
    C{spwm compile}: one line for each outcome.
    """

    def setUp(self) -> None:
        # a package of the test's own: not the one under test, which may be
        # built (a checkout after spwm compile) and must stay so
        self.package = _Package(self)
        self.patch(compiled, "_package_dir", lambda: self.package.dir)

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["compile", *argv], out, err)
        return code, out.getvalue(), err.getvalue()

    def test_check(self) -> None:
        code, out, err = self.run_main("--check")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines(), [f"{m}: source" for m in compiled.MODULES])

    def test_missing_tool(self) -> None:
        """
        A missing tool: one line saying which and how to get it, exit 1,
        nothing built.
        """
        with mock.patch.object(compiled, "_missing_tools", return_value="no C compiler (gcc not found)"):
            code, out, err = self.run_main()
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "spwm compile: no C compiler (gcc not found)\n")
        self.assertEqual(compiled.status(self.package.dir), [(m, "source") for m in compiled.MODULES])

    def test_tools_named(self) -> None:
        """
        Each tool the build needs is named when it is missing, with how
        to get it: mypyc (with mypy), mypy's zope.interface plugin (which
        types Twisted's interfaces for the build).
        """
        import builtins
        import importlib.util
        import types

        real_import, real_find = builtins.__import__, importlib.util.find_spec

        def mypyc(there: bool) -> Any:
            def imported(name: str, *args: Any, **kwargs: Any) -> Any:
                if name != "mypyc":
                    return real_import(name, *args, **kwargs)
                if not there:
                    raise ImportError(name)
                return types.ModuleType(name)

            return imported

        with mock.patch.object(builtins, "__import__", mypyc(False)):
            self.assertEqual(
                compiled._missing_tools(),
                "mypyc is not installed (it comes with mypy: python3 -m pip install mypy mypy-zope)",
            )
        with mock.patch.object(builtins, "__import__", mypyc(True)), mock.patch.object(
            importlib.util, "find_spec", lambda name, *a: None if name == "mypy_zope" else real_find(name, *a)
        ):
            self.assertEqual(
                compiled._missing_tools(),
                "mypy's zope.interface plugin is not installed (python3 -m pip install mypy-zope)",
            )

    def test_remove_nothing(self) -> None:
        code, out, err = self.run_main("--remove")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"nothing built in {self.package.dir}\n")

    def test_check_and_remove(self) -> None:
        """
        A build: --check says each module runs compiled, --remove takes
        its files away.
        """
        files = self.package.built()
        code, out, err = self.run_main("--check")
        self.assertEqual(out.splitlines(), [f"{m}: compiled" for m in compiled.MODULES])
        code, out, err = self.run_main("--remove")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"removed {len(files)} built files from {self.package.dir}\n")

    def test_both(self) -> None:
        """
        --remove and --check together: a usage error.
        """
        with mock.patch("sys.stderr", io.StringIO()) as stderr:
            e = self.assertRaises(SystemExit, self.run_main, "--remove", "--check")
        self.assertEqual(e.code, 2)
        self.assertIn("not allowed with argument", stderr.getvalue())
