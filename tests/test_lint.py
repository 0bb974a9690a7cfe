"""Lint as a test: ruff, snakefmt and `snakemake --lint` clean, scripts and packages laid out one way."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Stages in import order: a stage may import only those before it (and the leaves).
STAGES = ("data", "teach", "model", "train", "evaluate", "export", "exam", "report")
LEAVES = {"io_utils", "logs", "blas", "schema", "lazy"}
# The one `snakemake --lint` remark kept: jobs must import the blogtune of the workflow's own
# checkout (PYTHONPATH=basedir), not whichever copy an environment has installed.
ALLOWED_LINTS = ("Environment variable PYTHONPATH used but not asserted",)


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_clean():
    proc = run(str(BIN / "ruff"), "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_clean():
    proc = run(str(BIN / "snakefmt"), "--check", "Snakefile", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_lint_has_no_remarks_but_the_allowed_one():
    proc = run(sys.executable, "-m", "snakemake", "--lint")
    remarks = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("* ")]
    unexpected = [r for r in remarks if not any(a in r for a in ALLOWED_LINTS)]
    assert not unexpected, proc.stdout


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every `import` / `from x import y` in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_stages_import_one_way_and_no_private_names():
    problems = []
    for path in sorted((REPO / "blogtune").rglob("*.py")):
        parts = path.relative_to(REPO / "blogtune").parts
        own = parts[0] if len(parts) > 1 else None
        for module, names in _imports(path):
            m = re.match(r"blogtune\.(\w+)", module)
            if not m or own is None:
                continue
            target = m.group(1)
            if target in LEAVES or target == own:
                continue
            if target not in STAGES or STAGES.index(target) > STAGES.index(own):
                problems.append(f"{path.relative_to(REPO)} imports {module} (against data -> ... -> report)")
            if any(n.startswith("_") for n in names) or any(p.startswith("_") for p in module.split(".")[1:]):
                problems.append(f"{path.relative_to(REPO)} imports private names of {module}: {names}")
    assert not problems, "\n".join(problems)


def test_scripts_are_main_of_snakemake_without_sys_path_patches():
    for path in sorted((REPO / "scripts").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "sys.path.insert" not in text, path.name
        assert re.search(r"^def main\(snakemake\)", text, re.M), f"{path.name}: no main(snakemake)"
        assert re.search(r'mock_snakemake\("\w+"[,)]', text), f"{path.name}: no standalone entry"
        assert "argparse" not in text, f"{path.name}: standalone runs go through mock_snakemake"
