# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the ComfyUI host lives, and how to import it (and the pack) in-process without the pitfalls.

Stdlib only at import time, so the tier-1 tests and the tier-3 (server) tests can use it without torch.

Pitfalls handled here (shared/reference/comfyui-host.md §7.1, style.md §3.2):
- the pack's top-level ``nodes/`` shadows ComfyUI's ``nodes.py`` when the repo root precedes the ComfyUI root
  on ``sys.path``: :func:`import_comfy` moves ``COMFYUI_PATH`` to the FRONT of ``sys.path``;
- without a GPU, ``comfy.model_management`` crashes unless ``comfy.cli_args.args.cpu`` is set before it is
  imported: :func:`import_comfy` sets it first;
- the pack must be imported the way ComfyUI does (importlib spec of its ``__init__.py`` under a unique module
  name, so relative imports work and no top-level name is taken): :func:`load_pack`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
TEST_PACK_DIR = TESTS_DIR / "test_pack"
PACK_MODULE_NAME = "lyco_pack_under_test"


def host_dir() -> Path:
    """The git-ignored host folder made by scripts/install-host.sh (env ``LYCORIS_HOST_DIR`` overrides)."""
    return Path(os.environ.get("LYCORIS_HOST_DIR") or REPO_ROOT / ".host")


def comfyui_path() -> Path:
    """The ComfyUI tree: env ``COMFYUI_PATH``, else ``<host>/ComfyUI``."""
    env = os.environ.get("COMFYUI_PATH")
    return Path(env).resolve() if env else host_dir() / "ComfyUI"


def cache_dir() -> Path:
    """Git-ignored cache for generated fixtures (``<host>/cache``)."""
    return host_dir() / "cache"


def host_python() -> str:
    """The interpreter that runs ComfyUI: env ``COMFYUI_PYTHON``, else the host venv, else this one."""
    env = os.environ.get("COMFYUI_PYTHON")
    if env:
        return env
    venv = host_dir() / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def comfyui_unavailable_reason() -> str | None:
    """None when a usable ComfyUI tree exists, else a sentence saying why not and how to fix it."""
    path = comfyui_path()
    if not (path / "main.py").is_file() or not (path / "comfy" / "model_management.py").is_file():
        return (f"ComfyUI not found at {path} (set COMFYUI_PATH, or run scripts/install-host.sh to install "
                f"ComfyUI 0.3.75 into .host/)")
    if not os.environ.get("COMFYUI_PATH") and not (host_dir() / ".stamps" / "comfyui").exists():
        return f"ComfyUI install under {host_dir()} is incomplete (no .stamps/comfyui; install-host.sh running?)"
    return None


def comfyui_available() -> bool:
    return comfyui_unavailable_reason() is None


def _pack_shadow_of_nodes() -> bool:
    mod = sys.modules.get("nodes")
    f = getattr(mod, "__file__", None) or ""
    return bool(mod) and not Path(f).resolve().is_relative_to(comfyui_path().resolve())


def import_comfy(cpu: bool = True):
    """Make ``comfy`` importable in-process (tier 2) and return the ``comfy`` package.

    Puts ``COMFYUI_PATH`` at the front of ``sys.path`` (removing other copies of it), refuses to continue if
    a foreign ``nodes`` module is already imported (the pack's ``nodes/`` shadowing ComfyUI's ``nodes.py``),
    and sets ``comfy.cli_args.args.cpu = cpu`` before ``comfy.model_management`` is imported. When that is
    already imported (inside a ComfyUI server, or a second call), nothing changes: the loaded tree and device
    mode stay.
    """
    if "comfy.model_management" in sys.modules:  # already imported (e.g. inside a running ComfyUI server):
        return sys.modules["comfy"]                # keep that tree and its device mode
    reason = comfyui_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    root = str(comfyui_path())
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.abspath(root)]
    sys.path.insert(0, root)
    if _pack_shadow_of_nodes():
        raise RuntimeError(f"'nodes' is already imported from {sys.modules['nodes'].__file__}, not from "
                           f"{root}: the pack's nodes/ shadows ComfyUI's nodes.py (style.md §3.2). Import "
                           "lyco_testkit.host.import_comfy() before anything else imports 'nodes'.")
    import comfy.cli_args  # parses [] unless comfy.options.enable_args_parsing() was called

    comfy.cli_args.args.cpu = bool(cpu)
    import comfy
    return comfy


def load_pack(path: str | os.PathLike | None = None, name: str = PACK_MODULE_NAME, reload: bool = False):
    """Import a custom-node folder the way ComfyUI does: ``spec_from_file_location(name, <path>/__init__.py)``.

    The module is a package (``submodule_search_locations=[path]``), so its relative imports work, and it is
    registered under ``name`` only, so it neither takes a top-level name (``nodes``, ``utils``, ...) nor is
    shadowed by ComfyUI's. Calls :func:`import_comfy` first. Returns the module (cached in ``sys.modules``
    unless ``reload``). Raises FileNotFoundError when the folder has no ``__init__.py``.
    """
    import_comfy()
    folder = Path(path) if path is not None else REPO_ROOT
    init = folder / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"no custom-node package at {folder} (missing __init__.py)")
    if not reload and name in sys.modules:
        return sys.modules[name]
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def pack_node_classes(module) -> dict:
    """``{node_id: class}`` registered by a loaded pack, V1 (``NODE_CLASS_MAPPINGS``, which wins, as in
    ComfyUI) or V3 (``comfy_entrypoint()`` → ``ComfyExtension.get_node_list()``). Empty when neither."""
    import asyncio
    import inspect

    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None:
        return dict(mappings)
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is None:
        return {}

    async def _collect():
        ext = entry()
        if inspect.isawaitable(ext):
            ext = await ext
        nodes = ext.get_node_list()
        if inspect.isawaitable(nodes):
            nodes = await nodes
        return nodes

    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(_collect())}
