# SPDX-License-Identifier: GPL-3.0-or-later
"""Node ids and categories: a public contract (saved workflows name these). Never rename; add a V2 instead."""

LYCORIS_LOADER = "LycorisLoader"
LYCORIS_INFO = "LycorisInfo"
TLORA_SAMPLER_WRAPPER = "TLoraSamplerWrapper"
LYCORIS_STRENGTH = "LycorisStrength"

CATEGORY = "loaders/LyCORIS"
