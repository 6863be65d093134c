# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI entry point of the LyCORIS node pack.

ComfyUI imports this folder as a package and calls `comfy_entrypoint`. The import is guarded so that the pure
core and its tests work where ComfyUI is absent.
"""
WEB_DIRECTORY = "./js"

try:
    import comfy  # noqa: F401  (only present inside a ComfyUI host)
except ImportError:  # pragma: no cover - exercised by core-only test runs
    comfy_entrypoint = None
else:
    from .nodes.extension import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
