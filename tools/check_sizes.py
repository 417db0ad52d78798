"""Size limits that keep each module and function readable in one sitting (CONTRIBUTING.md).

No module over 450 lines and no function body over 60 lines (its docstring not counted), outside tests.
Prints each offender as ``path:line: what`` and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 450
MAX_BODY_LINES = 60
PACKAGES = ("hspace", "storage", "tasks", "flows", "bench", "tools")


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line."""
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
        and isinstance(body[0].value.value, str)
        and len(body) > 1
    ):
        body = body[1:]
    return (node.end_lineno or node.lineno) - body[0].lineno + 1


def offenders(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            lines = text.count("\n")
            where = path.relative_to(root)
            if lines > MAX_MODULE_LINES:
                found.append(f"{where}:1: module has {lines} lines (limit {MAX_MODULE_LINES})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_BODY_LINES:
                    found.append(
                        f"{where}:{node.lineno}: {node.name} has a body of {body_lines(node)} lines "
                        f"(limit {MAX_BODY_LINES})"
                    )
    return found


def main() -> int:
    found = offenders(Path(__file__).resolve().parents[1])
    print("\n".join(found) or "sizes: every module and function within the limits")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
