# SPDX-License-Identifier: GPL-3.0-or-later
"""Generic test configuration shared by every tier (tier-specific fixtures live in tests/<tier>/conftest.py).

- markers ``server`` / ``binding`` / ``gpu`` / ``slow``; tests under ``tests/server/`` and ``tests/binding/`` get
  ``server`` / ``binding`` automatically;
- ``server`` and ``binding`` tests are skipped, with the reason, when ComfyUI isn't installed; ``gpu`` tests when
  CUDA isn't available;
- ``comfy_server`` (session): a booted ComfyServer (lyco_testkit.server) with the pack, the test pack and the
  tiny models (lyco_testkit.server_models); ``comfy_server_factory`` (session) makes more (other flags),
  all stopped at session end;
- a failing test that used a ComfyServer gets the server log (since the test started) as a report section.

``tests/`` itself is on sys.path (pytest's rootdir conftest insertion), so ``import lyco_testkit`` works; it has
no ``__init__.py`` on purpose (style.md §3.2). Nothing here imports torch or comfy.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.append(str(TESTS_DIR))

from lyco_testkit import host  # noqa: E402
from lyco_testkit.server import ComfyServer  # noqa: E402

MARKERS = {
    "server": "boots a real ComfyUI server (tier 3)",
    "binding": "imports ComfyUI in-process (tier 2)",
    "gpu": "needs CUDA (optional)",
    "slow": "long-running (endurance, big fuzz)",
}
_LOG_MARK = pytest.StashKey[dict]()
_MAX_LOG_SECTION = 30000


def pytest_configure(config):
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "CUDA is not available"


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(TESTS_DIR).parts \
            if Path(str(item.fspath)).resolve().is_relative_to(TESTS_DIR) else ()
        if parts and parts[0] in ("server", "binding"):
            item.add_marker(getattr(pytest.mark, parts[0]))
    host_reason = host.comfyui_unavailable_reason()
    gpu_reason = None
    if any(item.get_closest_marker("gpu") for item in items):
        gpu_reason = _cuda_reason()
    for item in items:
        if host_reason and (item.get_closest_marker("server") or item.get_closest_marker("binding")):
            item.add_marker(pytest.mark.skip(reason=host_reason))
        if gpu_reason and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {gpu_reason}"))


# ------------------------------------------------------------------------------------------ server fixtures
class ServerFactory:
    """Makes booted ComfyServers with the tiny models; all are stopped by :meth:`close` (session end)."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self.servers: list[ComfyServer] = []

    def __call__(self, name: str = "comfy", models: bool = True, **kwargs) -> ComfyServer:
        reason = host.comfyui_unavailable_reason()
        if reason:
            pytest.skip(reason)
        base = self._tmp.mktemp(name)
        srv = ComfyServer(base_dir=base, **kwargs)
        self.servers.append(srv)
        if models:
            from lyco_testkit.server_models import write_server_models

            srv.tiny_models = write_server_models(srv.models_dir)
        srv.start()
        return srv

    def close(self):
        for srv in self.servers:
            srv.stop(cleanup=False)  # pytest's tmp_path retention handles the folders (and keeps logs)


@pytest.fixture(scope="session", autouse=True)
def _private_tlora_cache(tmp_path_factory):
    """T-LoRA SVD bases of every test (and of servers started by tests) go to a temp dir, never the user dir."""
    old = os.environ.get("LYCORIS_TLORA_CACHE_DIR")
    os.environ["LYCORIS_TLORA_CACHE_DIR"] = str(tmp_path_factory.mktemp("tlora_svd_cache"))
    yield
    if old is None:
        os.environ.pop("LYCORIS_TLORA_CACHE_DIR", None)
    else:
        os.environ["LYCORIS_TLORA_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def pack():
    """The pack package, imported by path under a unique name like ComfyUI does, with ComfyUI importable (CPU)."""
    reason = host.comfyui_unavailable_reason()
    if reason:
        pytest.skip(reason)
    host.import_comfy()
    return host.load_pack()


@pytest.fixture(scope="session")
def pack_mod(pack):
    """``pack_mod("lycoris_comfy.apply")`` -> that module of the pack."""
    import importlib

    return lambda name: importlib.import_module(f"{pack.__name__}.{name}")


@pytest.fixture(scope="session")
def binding(pack_mod):
    """``binding("apply")`` -> the pack's ``lycoris_comfy.apply`` module (any binding submodule by name)."""
    return lambda name: pack_mod(f"lycoris_comfy.{name}")


@pytest.fixture(scope="session")
def comfy_server_factory(tmp_path_factory):
    """``factory(name="comfy", models=True, **ComfyServer kwargs) -> ComfyServer`` (started)."""
    factory = ServerFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def comfy_server(comfy_server_factory) -> ComfyServer:
    """The shared server: pack + test pack + tiny models (``.tiny_models`` = server_models manifest).
    ``.boot_seconds`` is its boot time. Tests must not stop it; prompts share its output folder and cache."""
    return comfy_server_factory("comfy_server")


# ------------------------------------------------------------------------------ server log in failure reports
def _servers_of(item) -> list[ComfyServer]:
    funcargs = getattr(item, "funcargs", None) or {}
    found = [v for v in funcargs.values() if isinstance(v, ComfyServer)]
    factory = funcargs.get("comfy_server_factory")
    if isinstance(factory, ServerFactory):
        found += [s for s in factory.servers if s not in found]
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marks = item.stash.setdefault(_LOG_MARK, {})
    if call.when == "setup":  # session servers are up now: remember where this test's log starts
        for srv in _servers_of(item):
            marks.setdefault(id(srv), srv.log_mark())
    if not report.failed:
        return
    for srv in _servers_of(item):
        text = srv.log_text(since=marks.get(id(srv), 0))
        title = f"ComfyUI server log during this test ({srv.log_path})"
        if not text.strip():  # nothing logged meanwhile: the whole log's tail is more useful than nothing
            text, title = srv.log_text(), f"ComfyUI server log, whole ({srv.log_path})"
        if len(text) > _MAX_LOG_SECTION:
            text = "...\n" + text[-_MAX_LOG_SECTION:]
        report.sections.append((title, text or "(empty)"))


def pytest_report_header(config):
    reason = host.comfyui_unavailable_reason()
    where = f"ComfyUI: {host.comfyui_path()}" + (f" (unavailable: {reason})" if reason else "")
    return [where, f"host python: {host.host_python()}"]
