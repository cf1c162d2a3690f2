"""Every script in benchmarks/ imports and parses its options (`--help`), so a refactor that
breaks one is caught here rather than by the next person who runs it; and `_machine.header()`
names the load average every benchmark prints."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_script_imports_and_shows_help(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    assert exc.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_machine_header_names_cpu_bf16_and_load(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _machine

    line = _machine.header()
    assert "CPUs" in line and "native bf16" in line and "load average" in line
    assert len(_machine.load().split(" / ")) == 3
