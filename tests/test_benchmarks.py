"""The benchmark scripts (benchmarks/, run by hand, never by the tests) stay valid Python for every interpreter the
package supports: a syntax only a newer Python accepts would surface only when someone measures."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.py")), ids=lambda path: path.name)
def test_each_benchmark_script_compiles(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "compiled.pyc"), doraise=True)
