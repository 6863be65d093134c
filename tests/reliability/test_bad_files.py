# SPDX-License-Identifier: GPL-3.0-or-later
"""The bad-input catalogue in-process: every bad file raises the pack's LycorisError naming the file, the key and
a fix, and leaves the input MODEL bit-exact; the loadable oddities (fp16/bf16/fp8, odd metadata) load and work.
(The same files go through the HTTP API in test_bad_prompts.py.)"""
from __future__ import annotations

import pytest
import torch

import rel_catalogue
from rel_util import assert_untouched, state_hash

pytestmark = pytest.mark.binding

CASES = rel_catalogue.catalogue()
BAD = [c.id for c in CASES if not c.ok]
OK = [c.id for c in CASES if c.ok]


def test_catalogue_is_big_enough():
    assert len(BAD) + len(OK) >= 25 and len(set(BAD + OK)) == len(CASES)


@pytest.mark.parametrize("case_id", BAD)
def test_bad_file_refused_model_unchanged(case_id, rel_catalogue_dir, flux2_patcher, pack_mod, monkeypatch):
    case = rel_catalogue_dir.cases[case_id]
    apply = pack_mod("lycoris_comfy.apply")
    errors = pack_mod("lycoris_core.errors")
    path = rel_catalogue_dir.folder / case.path_name
    if case.id == "absurd_tensor_for_target" or case.id.startswith(("pickle", "plain_pickle", "zip")):
        # refused from the header / the name: no tensor is ever read, nothing is ever unpickled
        import pickle
        import safetensors.torch

        def boom(*a, **k):
            raise AssertionError(f"{case.id}: tensor data was read or unpickled")

        monkeypatch.setattr(safetensors.torch, "load_file", boom)
        monkeypatch.setattr(torch, "load", boom)
        monkeypatch.setattr(pickle, "load", boom)
        monkeypatch.setattr(pickle, "loads", boom)
    before = state_hash(flux2_patcher)
    for mode in ("auto", "bypass"):
        with pytest.raises(errors.LycorisError) as info:
            apply.apply_lycoris(flux2_patcher, str(path), 0.8, mode)
        err = info.value
        msg = str(err)
        assert type(err).__name__ == case.error, msg
        assert case.path_name in msg, f"the message does not name the file: {msg}"
        for text in case.expect + case.names:
            assert text in msg, f"{text!r} not in: {msg}"
        assert case.fix in msg, f"no fix ({case.fix!r}) in: {msg}"
        assert len(msg) < 2000, "error messages must stay readable"
        assert_untouched(flux2_patcher, before)


def _inputs(patcher):
    from lyco_testkit import twins

    tw = twins.Twin(family="flux2", seed=0, diffusers_model=None, comfy_patcher=patcher, diffusers_config={},
                    unet_config=twins.unet_config_for("flux2"))
    return tw, tw.make_inputs(0)


def _merged_weights(patched) -> dict:
    """The model's weights with the merged patches applied (then unpatched again)."""
    patched.patch_model(device_to=torch.device("cpu"))
    try:
        return {k: v.detach().clone() for k, v in patched.model.state_dict().items()}
    finally:
        patched.unpatch_model()


def _max_delta(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# Loose sanity bound against the fp32 originals (fp8 keeps 2-3 significant bits); the exact check is against the
# same values upcast to fp32.
TOLERANCE = {"fp16_file": 2e-3, "bf16_file": 2e-2, "fp8_e4m3_file": 0.2, "fp8_e5m2_lokr_file": 0.6}


@pytest.mark.parametrize("case_id", OK)
def test_loadable_file_works(case_id, rel_catalogue_dir, flux2_patcher, pack_mod, tmp_path):
    """Merged: the patched weights equal those of the file's own values upcast to fp32 (and stay near the fp32
    original's). Bypass (what fp8/quantized bases use): one forward, equal to the upcast file's."""
    from safetensors.torch import load_file, save_file

    case = rel_catalogue_dir.cases[case_id]
    apply = pack_mod("lycoris_comfy.apply").apply_lycoris
    before = state_hash(flux2_patcher)
    base_w = {k: v.detach().clone() for k, v in flux2_patcher.model.state_dict().items()}
    path = str(rel_catalogue_dir.folder / case.path_name)
    upcast = tmp_path / "upcast.safetensors"  # the file's own values in fp32: what it must compute exactly
    save_file({k: v.float() for k, v in load_file(path).items()}, str(upcast))
    original = str(rel_catalogue_dir.folder / rel_catalogue_dir.good[case.extra.get("base", "locon")])

    patched, report = apply(flux2_patcher, path, 0.8, "merged")
    text = report.text()
    assert report.placed == report.total > 0 and "mode merged" in text
    for needle in case.expect:
        assert needle in text, f"{needle!r} not in the node text:\n{text}"
    assert len(text) < 4000, "metadata must not be echoed into the node text"
    got = _merged_weights(patched)
    want = _merged_weights(apply(flux2_patcher, str(upcast), 0.8, "merged")[0])
    orig = _merged_weights(apply(flux2_patcher, original, 0.8, "merged")[0])
    effect = _max_delta(orig, base_w)
    assert effect > 1e-3
    assert _max_delta(got, want) <= 1e-6 * effect, "merged weights differ from the file's values in fp32"
    assert _max_delta(got, orig) <= TOLERANCE.get(case.id, 1e-6) * effect
    assert_untouched(flux2_patcher, before)

    if "fp8" in case.id:
        tw, inputs = _inputs(flux2_patcher)
        out = tw.run_comfy(apply(flux2_patcher, path, 0.8, "bypass")[0], inputs)
        ref = tw.run_comfy(apply(flux2_patcher, str(upcast), 0.8, "bypass")[0], inputs)
        base = tw.run_comfy(flux2_patcher, inputs)
        assert float((ref - base).abs().max()) > 1e-3
        assert float((out - ref).abs().max()) <= 1e-4 * float((ref - base).abs().max())
        assert_untouched(flux2_patcher, before)
