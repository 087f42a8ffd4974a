"""The layering of DESIGN.md holds: the core is sans-IO, the kv machine knows no Raft."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "trioraft"
IO_MODULES = {"trio", "anyio", "httpx", "quart", "quart_trio", "hypercorn", "socket", "asyncio",
              "time", "threading", "os", "sqlite3", "subprocess", "select"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0] if not node.module.startswith("trioraft")
                    else node.module)
    return out


@pytest.mark.parametrize("path", sorted((PKG / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_io_clock_or_global_randomness(path: Path) -> None:
    imported = _imports(path)
    assert not imported & IO_MODULES
    assert not {m for m in imported if m.startswith("trioraft.") and
                not m.startswith("trioraft.core")}


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe], cwd=PKG.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
