# SPDX-License-Identifier: GPL-3.0-or-later
"""Resolve a `lycoris_name` to a file inside ComfyUI's `loras` folders, and nothing outside them."""
from __future__ import annotations

import os

import folder_paths

from ..lycoris_core.errors import LycorisError

FOLDER = "loras"


def lycoris_names() -> list[str]:
    """Relative names of the files in ComfyUI's `loras` folders (what the loader's combo offers)."""
    return folder_paths.get_filename_list(FOLDER)


def lycoris_name_problem(name) -> str | None:
    """Why `name` cannot be loaded (None when it is fine, or unknown yet: a linked input): not listed in the loras
    folders, or a link resolving outside them. Opens nothing. For validation: ComfyUI 0.3.75 does not check V3
    combo values against their options, so the loader checks them itself."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in lycoris_names():
        shown = repr(name) if len(repr(name)) <= 200 else repr(name)[:200] + "..."
        return f"lycoris_name {shown} is not a file in ComfyUI's models/loras folders; pick one from the list"
    try:
        resolve_lycoris_path(name)
    except (LycorisError, OSError) as e:
        return str(e)
    return None


def resolve_lycoris_path(name: str) -> str:
    """The absolute path of `name`, which must be listed in the `loras` folders and not resolve outside them."""
    if not isinstance(name, str) or name not in lycoris_names():
        raise LycorisError(f"{name!r} is not a file in ComfyUI's models/loras folders; pick one from the list.")
    path = folder_paths.get_full_path_or_raise(FOLDER, name)
    real = os.path.realpath(path)
    roots = [os.path.realpath(p) for p in folder_paths.get_folder_paths(FOLDER)]
    if not any(real == r or real.startswith(r + os.sep) for r in roots):
        raise LycorisError(f"{name!r} resolves outside the loras folders ({real}); refusing to read it.")
    return path
