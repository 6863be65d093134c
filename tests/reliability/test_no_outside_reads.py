# SPDX-License-Identifier: GPL-3.0-or-later
"""Nothing outside ComfyUI's loras folders is ever opened, whatever name arrives (in-process, audited).

A Python audit hook records every ``open`` while the pack's entry points (name validation, the loader and info
nodes' execute, the /lycoris/api/info route's handler function, path resolution) are called with traversal
names, absolute paths, and symlinks in the loras folder that point outside it. Pickle files inside the folder
are refused without being opened. A positive control proves the hook sees the pack's reads.
"""
from __future__ import annotations

import os
import sys

import pytest

pytestmark = pytest.mark.binding

_EVENTS: list = []
_RECORDING = [False]


def _hook(event, args):
    if _RECORDING[0] and event == "open" and args:
        target = args[0]
        if isinstance(target, (str, bytes, os.PathLike)):
            _EVENTS.append(os.fsdecode(target))


sys.addaudithook(_hook)  # audit hooks cannot be removed: it records only while _RECORDING[0] is True


class Recorder:
    def __enter__(self):
        _EVENTS.clear()
        _RECORDING[0] = True
        return _EVENTS

    def __exit__(self, *exc):
        _RECORDING[0] = False


@pytest.fixture
def loras(tmp_path, rel_catalogue_dir, monkeypatch, pack):
    """A models/loras folder (good files, a .ckpt, a symlinked file and folder pointing outside) installed as
    ComfyUI's only loras folder; the outside folder holds a valid LyCORIS file."""
    import folder_paths

    root = tmp_path / "models" / "loras"
    root.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    good = rel_catalogue_dir.good["locon"]
    data = (rel_catalogue_dir.folder / good).read_bytes()
    (root / good).write_bytes(data)
    (outside / "secret.safetensors").write_bytes(data)
    (root / "pickle.ckpt").write_bytes((rel_catalogue_dir.folder / "rel_pickle.ckpt").read_bytes())
    (root / "link.safetensors").symlink_to(outside / "secret.safetensors")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(root)], set(folder_paths.supported_pt_extensions)))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    folder_paths.cache_helper.clear()
    yield {"root": root, "outside": outside, "good": good}
    folder_paths.cache_helper.clear()


NAMES = ["../outside/secret.safetensors", "../../outside/secret.safetensors", "<outside-absolute>",
         "link.safetensors", "linkdir/secret.safetensors", "/etc/passwd", "..", "linkdir/../../outside/secret.safetensors",
         "missing.safetensors", "pickle.ckpt"]


def _outside_opens(events, outside) -> list[str]:
    real = os.path.realpath(outside)
    return [e for e in events if os.path.realpath(e) == real or os.path.realpath(e).startswith(real + os.sep)]


def _call_everything(pack_mod, name, model):
    """Every entry point that takes a lycoris_name; each must refuse with the pack's LycorisError (or a
    validation message)."""
    errors = pack_mod("lycoris_core.errors")
    loader = pack_mod("nodes.loader_node").LycorisLoader
    info = pack_mod("nodes.info_node").LycorisInfo
    problem = loader.validate_inputs(lycoris_name=name, strength=1.0, mode="auto")
    if name.endswith(".ckpt"):
        assert problem is True  # listed and inside the folder: refused when loading, by its extension
    else:
        assert isinstance(problem, str) and "loras folders" in problem, problem
    results = []
    resolve = pack_mod("lycoris_comfy.paths").resolve_lycoris_path
    if name.endswith(".ckpt"):
        resolve(name)  # a listed file inside the folder resolves (no open); loading it is what is refused
        resolve = None
    for fn in (resolve and (lambda: resolve(name)),
               lambda: loader.execute(model, name, 1.0, "auto"),
               lambda: info.execute(name)):
        if fn is None:
            continue
        with pytest.raises(errors.LycorisError) as e:
            fn()
        results.append(str(e.value))
    try:
        routes = pack_mod("lycoris_comfy.routes")
    except ImportError:
        routes = None
    if routes is not None and hasattr(routes, "info_for_name"):
        with pytest.raises(errors.LycorisError):
            routes.info_for_name(name)
    return results


@pytest.mark.parametrize("name", NAMES)
def test_refused_names_open_nothing_outside(loras, name, pack_mod, flux2_patcher):
    if name == "<outside-absolute>":
        name = str(loras["outside"] / "secret.safetensors")
    with Recorder() as events:
        messages = _call_everything(pack_mod, name, flux2_patcher)
    assert not _outside_opens(events, loras["outside"]), events
    if name == "pickle.ckpt":  # listed, inside the folder, but a pickle: refused by its name, never opened
        assert not [e for e in events if e.endswith("pickle.ckpt")], events
        assert all("pickles" in m for m in messages), messages
    elif name in ("link.safetensors", "linkdir/secret.safetensors"):
        assert all("resolves outside the loras folders" in m for m in messages), messages
    else:
        assert all("is not a file in ComfyUI's models/loras folders" in m for m in messages), messages


def test_hook_sees_the_pack_reading_a_listed_file(loras, pack_mod, flux2_patcher):
    """Positive control: loading a listed file shows up as an open of that file, inside the folder."""
    pack_mod("lycoris_comfy.file_cache").clear()
    loader = pack_mod("nodes.loader_node").LycorisLoader
    assert loader.validate_inputs(lycoris_name=loras["good"], strength=1.0, mode="auto") is True
    with Recorder() as events:
        loader.execute(flux2_patcher, loras["good"], 1.0, "auto")
    opened = [os.path.realpath(e) for e in events]
    assert os.path.realpath(loras["root"] / loras["good"]) in opened, events
    assert not _outside_opens(events, loras["outside"])
