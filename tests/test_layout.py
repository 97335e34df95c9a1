"""The house: which package may import which, checked on the source (every import, also those inside functions)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spanwise_io", "schemas", "tokenization", "corpora", "modeling", "trainer", "beam_pipelines")
# What each package may import of the others: each one only what sits below it.
ALLOWED = {
    "spanwise_io": set(),
    "schemas": {"spanwise_io"},
    "tokenization": {"spanwise_io"},
    "corpora": {"spanwise_io", "schemas"},
    "modeling": {"spanwise_io", "schemas", "tokenization"},
    "trainer": {"spanwise_io", "schemas", "tokenization", "corpora", "modeling"},
    "beam_pipelines": {"spanwise_io", "schemas", "tokenization", "corpora", "modeling", "trainer"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """The spanwise packages a module imports, each with the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def test_the_walk_finds_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from beam_pipelines.readers import x\n    import trainer.task\n")
    assert imported_packages(module) == {"beam_pipelines": 4, "trainer": 5}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_runs_back_up_the_house(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for imported, line in imported_packages(path).items():
            if imported != package and imported not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_every_package_says_what_lives_there_and_who_imports_it():
    for package in PACKAGES:
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{package}/__init__.py: its docstring must say what may import it"


@pytest.mark.parametrize("module", ["trainer.predict", "trainer.task", "modeling.classifier", "corpora.inputs"])
def test_the_engine_neutral_side_loads_no_beam(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
