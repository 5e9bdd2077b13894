"""Layers point one way: server -> tools, resources. tools/ and resources/ never import the
server package, and channel_bridges/ talks to the CRM only as an MCP client (no server or tool
internals). Checked on the import statements themselves, so a lazy import inside a function
counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "tools": ("crm_mcp.server",),
    "resources": ("crm_mcp.server",),
    "channel_bridges": ("crm_mcp.server", "crm_mcp.tools", "crm_mcp.resources"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package inside crm_mcp
                pkg = ["crm_mcp", *path.relative_to(REPO).parent.parts]
                base = pkg[: len(pkg) - (node.level - 1)]
                out.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.startswith(FORBIDDEN[package]):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, "layer violation:\n" + "\n".join(bad)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    probe = REPO / "tools" / "plumbing" / "_layer_probe.py"
    probe.write_text("def f():\n    from ...server import config\n")
    try:
        assert (2, "crm_mcp.server") in imported_modules(probe)
    finally:
        probe.unlink()
