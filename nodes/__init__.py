# SPDX-License-Identifier: GPL-3.0-or-later
"""Thin ComfyUI nodes: schemas, tooltips and UI text; the work happens in `lycoris_comfy`."""
