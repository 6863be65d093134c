# SPDX-License-Identifier: GPL-3.0-or-later
"""ComfyUI binding: the only package that imports `comfy`.

Key maps per architecture (`keymaps`), merged patches (`merged`), bypass injections (`bypass`), the T-LoRA
sampler wrapper, and the loader logic the nodes call (`apply`).
"""
