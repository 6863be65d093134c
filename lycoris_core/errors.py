# SPDX-License-Identifier: GPL-3.0-or-later
"""Typed errors. Every message names the file, the key and a fix, because users see them verbatim in ComfyUI."""


class LycorisError(ValueError):
    """Base class of every error this pack raises on purpose (bad file, bad target, bad parameter)."""


class AdapterFormatError(LycorisError):
    """The file is not a readable LyCORIS safetensors file, or a module's tensors are incomplete/unknown."""


class ShapeMismatchError(LycorisError):
    """A module's tensors do not fit the weight they target (usually: a file for another base model)."""


class NoMatchingKeysError(LycorisError):
    """No module of the file matches the model (a file trained on another model family)."""
