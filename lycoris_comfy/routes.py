# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP routes for the frontend: `GET /lycoris/api/info?name=<lycoris_name>`.

Reads only a file's safetensors header (metadata), and only for names listed in ComfyUI's loras folders
(the same rule as the nodes). Registered only when a PromptServer exists.
"""
from __future__ import annotations

import logging

from ..lycoris_core.errors import LycorisError
from ..lycoris_core.safetensors_file import read_metadata_only
from .paths import resolve_lycoris_path

log = logging.getLogger("comfyui_lycoris")


def metadata_summary(name: str) -> dict:
    """The header facts of loras file `name`: algorithm(s), ranks, module count, base model, T-LoRA params."""
    return read_metadata_only(resolve_lycoris_path(name))


def register() -> None:
    """Add the routes to ComfyUI's server, if one is running (no-op in scripts and tests)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return

    @PromptServer.instance.routes.get("/lycoris/api/info")
    async def lycoris_info(request):
        name = request.query.get("name", "")
        try:
            return web.json_response(metadata_summary(name))
        except (LycorisError, OSError) as e:
            return web.json_response({"error": str(e)}, status=400)
