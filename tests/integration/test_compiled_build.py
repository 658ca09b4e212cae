"""
A real C{spwm compile} (mypyc, a C compiler and Python's headers; CI has
them): the package copied to a temporary directory, built there, and the
whole unit suite and calls on loopback run against the built modules; then a source changed after
the build runs as its source. Without the tools the test is skipped, or
fails with C{SPWM_REQUIRE_E2E=1}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import spwm
from spwm import compiled
from spwm.testing.required import unavailable

#: bounds of each step (s): the build takes about 90 s of one core
BUILD_TIMEOUT = 600.0
TESTS_TIMEOUT = 600.0

_CHECK = (
    "import spwm.sip.message as m, spwm.sip.uri as u; "
    "print(m.__file__); print(u.__file__); "
    "msg = m.parse_message(b'OPTIONS sip:a@192.0.2.1 SIP/2.0\\r\\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKx\\r\\n"
    "From: <sip:b@192.0.2.2>;tag=1\\r\\nTo: <sip:a@192.0.2.1>\\r\\nCall-ID: c\\r\\nCSeq: 1 OPTIONS\\r\\n"
    "Content-Length: 0\\r\\n\\r\\n'); print(msg.from_tag, msg.cseq, msg.top_via.branch)"
)


class CompiledBuildTests(SynchronousTestCase):
    def setUp(self) -> None:
        missing = compiled._missing_tools()
        if missing is not None:
            unavailable(f"spwm compile: {missing}")
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        # the checkout (the unit tests read its docs, examples and setup.cfg)
        # with the package Python imported, unbuilt
        source = os.path.dirname(os.path.abspath(spwm.__file__))
        checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        ignore = shutil.ignore_patterns(
            ".git", ".hypothesis", "_trial_temp*", "__pycache__", "*.so", compiled.MANIFEST, "build", "*.egg-info"
        )
        shutil.copytree(checkout, self.root, ignore=ignore, dirs_exist_ok=True)
        shutil.rmtree(os.path.join(self.root, "spwm"))
        shutil.copytree(source, os.path.join(self.root, "spwm"), ignore=ignore)
        # as in a virtual environment's site-packages, other modules beside
        # the package: one that typeshed also knows (mypy, which mypyc
        # runs, must not take it for one of the project's own)
        import typing_extensions

        shutil.copy(typing_extensions.__file__, self.root)
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run_here(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        # (the copy is the directory Python starts in: its spwm and tests
        # come first on the path)
        return subprocess.run(
            [sys.executable, *argv], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def test_build_and_run(self) -> None:
        built = self.run_here("-m", "spwm", "compile", timeout=BUILD_TIMEOUT)
        self.assertEqual(built.returncode, 0, built.stderr + built.stdout)
        self.assertIn(f"built {len(compiled.MODULES) + 1} files", built.stdout)
        check = self.run_here("-m", "spwm", "compile", "--check", timeout=60)
        self.assertEqual(check.stdout.splitlines(), [f"{m}: compiled" for m in compiled.MODULES])
        # the modules that run are the built ones, and they parse
        ran = self.run_here("-c", _CHECK, timeout=60)
        self.assertEqual(ran.returncode, 0, ran.stderr)
        lines = ran.stdout.splitlines()
        self.assertTrue(lines[0].endswith(".so") and lines[1].endswith(".so"), lines)
        self.assertEqual(lines[2], "1 (1, 'OPTIONS') z9hG4bKx")
        # every unit test, and calls through both halves on loopback, with
        # their media, against them
        modules = sorted(
            "tests." + name[:-3]
            for name in os.listdir(os.path.join(self.root, "tests"))
            if name.startswith("test_") and name.endswith(".py")
        )
        self.assertIn("tests.test_sip_message", modules)
        modules += [
            "tests.integration.test_sip_loopback",
            "tests.integration.test_tunnel_loopback",
            "tests.integration.test_quality",
        ]
        trial = self.run_here("-m", "twisted.trial", "--temp-directory", "_trial_compiled", *modules, timeout=TESTS_TIMEOUT)
        self.assertEqual(trial.returncode, 0, trial.stdout[-3000:] + trial.stderr[-2000:])
        self.assertIn("PASSED", trial.stdout)
        # a source changed after the build runs as its source, with a warning
        with open(os.path.join(self.root, "spwm", "sip", "message.py"), "a") as f:
            f.write("\n# changed after the build\n")
        ran = self.run_here("-c", _CHECK, timeout=60)
        self.assertEqual(ran.returncode, 0, ran.stderr)
        lines = ran.stdout.splitlines()
        self.assertTrue(lines[0].endswith("message.py") and lines[1].endswith(".so"), lines)
        self.assertIn("the source of spwm.sip.message changed since it was compiled", ran.stderr)
        # and the build is taken away
        removed = self.run_here("-m", "spwm", "compile", "--remove", timeout=60)
        self.assertIn(f"removed {len(compiled.MODULES) + 1} built files", removed.stdout)
        self.assertEqual(compiled._built_files(self.root), set())
        self.assertFalse(os.path.exists(os.path.join(self.root, "spwm", compiled.MANIFEST)))
