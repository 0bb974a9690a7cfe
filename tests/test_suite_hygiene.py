"""The test suite itself: hard requirements are imported plainly, and no test asserts a wall-clock
budget (those live in bench/wallclock_limits.py; a busy machine must not fail the suite)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HARD_REQUIREMENTS = {"torch", "transformers", "mlx", "mlx_lm", "gguf", "tokenizers", "numpy"}
CLOCKS = {"perf_counter", "monotonic", "time", "process_time"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            yield node, fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")


def test_hard_requirements_are_not_skipped_when_missing():
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node, name in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            if name == "importorskip" and node.args and isinstance(node.args[0], ast.Constant):
                if str(node.args[0].value).split(".")[0] in HARD_REQUIREMENTS:
                    found.append(f"{path.name}:{node.lineno} importorskip({node.args[0].value!r})")
    assert not found, found


def _is_clock(node: ast.AST) -> bool:
    fn = node.func if isinstance(node, ast.Call) else None
    return (isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) and fn.value.id == "time"
            and fn.attr in CLOCKS)


def test_no_wall_clock_or_throughput_asserts():
    """An elapsed time (`time.x() - t0`) in a test is a wall-clock budget in the making; a deadline
    (`time.x() + limit`, compared with the clock) only bounds a wait for an event, and is fine."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _is_clock(node.left):
                found.append(f"{path.name}:{node.lineno} measures elapsed time: {ast.unparse(node)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert) and "gflops" in ast.unparse(node.test).lower():
                found.append(f"{path.name}:{node.lineno} asserts GFLOP/s")
    assert not found, found
