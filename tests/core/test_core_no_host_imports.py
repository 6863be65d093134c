# SPDX-License-Identifier: GPL-3.0-or-later
"""lycoris_core must stay pure torch: no ComfyUI, no node code (checked on the AST of every file)."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "lycoris_core"
FORBIDDEN = {"comfy", "folder_paths", "server", "nodes", "lycoris_comfy", "comfy_extras", "execution"}


def _imported_roots(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: climbing out of lycoris_core is as bad
                parts = Path("lycoris_core").parts
                if node.level > len(parts):
                    yield (mod.split(".")[0] or "<parent>"), node.lineno
                continue
            yield mod.split(".")[0], node.lineno


def test_core_imports_no_host_or_node_code():
    files = sorted(CORE.rglob("*.py"))
    assert files
    bad = []
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        for root, line in _imported_roots(tree):
            if root in FORBIDDEN or root == "<parent>":
                bad.append(f"{f.relative_to(CORE.parent)}:{line} imports {root}")
        first = f.read_text(encoding="utf-8").splitlines()[:1]
        if first != ["# SPDX-License-Identifier: GPL-3.0-or-later"]:
            bad.append(f"{f.relative_to(CORE.parent)}: missing SPDX header line")
    assert not bad, "\n".join(bad)


def test_public_functions_have_docstrings():
    missing = []
    for f in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if ast.get_docstring(node) is None and not _is_override(node):
                    missing.append(f"{f.name}:{node.lineno} {node.name}")
    assert not missing, missing


def _is_override(node) -> bool:
    # Small overrides of documented base methods (shape_key etc.) inherit their contract.
    return isinstance(node, ast.FunctionDef) and node.name in {"shape_key", "out_features"}
