"""
Shared start-up of the atheris fuzz targets: seed corpus from tests/data and
the libFuzzer command line.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "tests" / "data"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def seed_corpus(name: str, seeds: Iterable[tuple[str, bytes]]) -> Path:
    """
    Make (or top up) C{fuzz/corpus/NAME} with the seed inputs; libFuzzer
    adds what it finds there.  The folder is not committed.
    """
    corpus = HERE / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for file_name, data in seeds:
        path = corpus / file_name
        if not path.exists():
            path.write_bytes(data)
    return corpus


def files(*patterns: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files under tests/data matching the glob patterns."""
    out = []
    for pattern in patterns:
        for path in sorted(DATA.glob(pattern)):
            if path.is_file() and path.suffix != ".tsv":
                out.append((f"seed-{path.parent.name}-{path.name}", path.read_bytes()))
    return out


def run(name: str, test: Callable[[bytes], None], seeds: Iterable[tuple[str, bytes]]) -> None:
    """
    Run C{test} under atheris with libFuzzer's options from the command
    line; without a corpus folder on the command line, the seed corpus
    C{fuzz/corpus/NAME} is used.  Crashes land in C{fuzz/crashes/}.
    """
    import atheris

    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(str(seed_corpus(name, seeds)))
    if not any(a.startswith("-artifact_prefix=") for a in argv[1:]):
        crashes = HERE / "crashes"
        crashes.mkdir(exist_ok=True)
        argv.insert(1, f"-artifact_prefix={crashes}{os.sep}{name}-")
    atheris.Setup(argv, test)
    atheris.Fuzz()


__all__ = ["run", "files", "seed_corpus", "shutil"]
