# SPDX-License-Identifier: GPL-3.0-or-later
"""The pack's ComfyExtension: the list of nodes ComfyUI registers."""
from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from .info_node import LycorisInfo
from .loader_node import LycorisLoader
from .strength_node import LycorisStrength
from .tlora_node import TLoraSamplerWrapper


class LycorisExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LycorisLoader, LycorisInfo, LycorisStrength, TLoraSamplerWrapper]


async def comfy_entrypoint() -> LycorisExtension:
    """ComfyUI's V3 entry point (also adds the page extension's info route when a server runs)."""
    try:
        from ..lycoris_comfy import routes

        routes.register()
    except Exception:  # noqa: BLE001 - the nodes must load even if the route cannot
        logging.getLogger("comfyui_lycoris").warning("LyCORIS info route not registered", exc_info=True)
    return LycorisExtension()
