# SPDX-License-Identifier: GPL-3.0-or-later
"""One module per LyCORIS algorithm; `registry.parse_modules` turns a file's tensors into `Adapter`s."""
from .base import Adapter
from .registry import ADAPTERS, detect_algorithm, parse_modules
from .tlora import tlora_svd_base

__all__ = ["Adapter", "ADAPTERS", "detect_algorithm", "parse_modules", "tlora_svd_base"]
