"""The library imports nothing of the application (eexit.app) and ``import eexit`` no Triton; no
command module of the command line imports another."""
import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eexit"
LIBRARY = sorted(
    ".".join(("eexit",) + p.relative_to(PACKAGE).with_suffix("").parts).replace(".__init__", "")
    for p in PACKAGE.rglob("*.py") if p.parts[len(PACKAGE.parts)] != "app" and p.name != "__main__.py"
)
COMMANDS = sorted((PACKAGE / "app" / "cli").glob("cmd_*.py"))


def modules_after(code: str) -> list:
    """sys.modules of a fresh interpreter after running ``code`` in the repository root."""
    res = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_the_library_list_is_complete():
    assert {"eexit", "eexit.ops", "eexit.reference", "eexit.runner", "eexit.nn", "eexit.models", "eexit.calibrate",
            "eexit.flops", "eexit.losses", "eexit.timing"} <= set(LIBRARY)


def test_the_library_imports_no_application_module():
    loaded = modules_after("\n".join(f"import {m}" for m in LIBRARY))
    assert set(LIBRARY) <= set(loaded)
    assert [m for m in loaded if m == "eexit.app" or m.startswith("eexit.app.")] == []


def test_import_eexit_imports_no_triton():
    loaded = modules_after("import eexit")
    assert [m for m in loaded if m == "triton" or m.startswith("triton.")] == []


def imported_names(tree: ast.AST) -> list:
    """Every dotted name an import statement of ``tree`` names (``from a import b``: a and a.b)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("path", COMMANDS, ids=[p.stem for p in COMMANDS])
def test_no_command_module_imports_another(path):
    assert len(COMMANDS) >= 5
    others = [n for n in imported_names(ast.parse(path.read_text(), str(path)))
              if any(part.startswith("cmd_") for part in n.split("."))]
    assert others == [], f"{path.name} imports {others}"
