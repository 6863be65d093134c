# SPDX-License-Identifier: GPL-3.0-or-later
"""Test kit shared by the test tiers, scripts/demo.py and the benchmarks.

Importing the package imports nothing heavy (no torch, no comfy): pick the submodule you need.

- ``host``           locate ComfyUI, ``import_comfy()`` (tier 2, CPU, ComfyUI first on sys.path), ``load_pack()``
- ``server``         ``ComfyServer``: a real ``main.py`` subprocess + stdlib HTTP client (tier 3)
- ``server_models``  tiny model files the stock loaders detect (cached under ``.host/cache``)

``tests/`` has no ``__init__.py`` on purpose (ComfyUI owns the top-level name ``tests``); callers put
``tests/`` on ``sys.path`` AFTER the ComfyUI root (pytest's rootdir conftest does this for tests).
"""
