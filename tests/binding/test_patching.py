# SPDX-License-Identifier: GPL-3.0-or-later
"""The host contract of both forms: no mutation of the input, bit-exact restore, low-VRAM, clone chains,
stacking, switching between clones, and the strength node's equivalence with the loader's strength."""
from __future__ import annotations

import hashlib

import pytest
import torch

from lyco_testkit.lycoris_files import config_for, make_lycoris

BOUND = 1e-4


def state_hash(patcher) -> str:
    """sha256 over every tensor of the model's state dict (names, dtypes and bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(patcher.model.state_dict().items()):
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rel(a, b, base) -> float:
    return float((a - b).abs().max()) / float((b - base).abs().max())


@pytest.fixture(scope="module")
def flux2_files(get_twin, tmp_path_factory):
    twin = get_twin("flux2")
    d = tmp_path_factory.mktemp("flux2_files")
    files = {}
    for name, algo, kw in [("lokr", "lokr", {}), ("locon", "locon", {}), ("dora", "dora", {}), ("ia3", "ia3", {}),
                           ("oft", "diag-oft", {}), ("boft", "boft", {}), ("full", "full", {}),
                           ("loha", "loha", {}), ("glora", "glora", {})]:
        art = make_lycoris(twin.pristine_diffusers_model(), d / f"{name}.safetensors",
                           config_for(algo, "flux2", **kw), seed=11, weight_std=0.2)
        files[name] = str(art.path)
    return twin, files


@pytest.mark.parametrize("mode", ["merged", "bypass"])
def test_input_untouched_and_restored_bit_exact(binding, flux2_files, mode):
    twin, files = flux2_files
    apply = binding("apply").apply_lycoris
    base = twin.fresh_comfy_patcher()
    before = state_hash(base)
    inputs = twin.make_inputs(0)
    base_out = twin.run_comfy(base, inputs)
    patched, _ = apply(base, files["lokr"], 1.0, mode)
    assert not base.patches and not base.injections, "the input ModelPatcher was modified"
    out = twin.run_comfy(patched, inputs)
    assert float((out - base_out).abs().max()) > 1e-3
    # Switching back to the base clone unpatches/ejects: outputs and weights are the base ones again, bit-exact.
    again = twin.run_comfy(base, inputs)
    assert torch.equal(again, base_out)
    patched.unpatch_model()
    assert state_hash(base) == before


def test_low_vram_equals_full_load(binding, flux2_files):
    """Under low VRAM ComfyUI leaves weights unpatched and calls our adapter per forward (LowVramPatch): the
    weights it produces equal the fully merged ones."""
    twin, files = flux2_files
    cpu = torch.device("cpu")
    full, _ = binding("apply").apply_lycoris(twin.fresh_comfy_patcher(), files["dora"], 0.8, "merged")
    full.patch_model(device_to=cpu)
    merged = {k: v.detach().clone() for k, v in full.model.state_dict().items()}
    full.unpatch_model()
    low, _ = binding("apply").apply_lycoris(twin.fresh_comfy_patcher(), files["dora"], 0.8, "merged")
    low.patch_model(device_to=cpu, lowvram_model_memory=1)
    try:
        checked = 0
        for name, module in low.model.named_modules():
            functions = getattr(module, "weight_function", None)
            if not functions:
                continue
            weight = module.weight.detach().float()
            for fn in functions:
                weight = fn(weight)
            assert float((weight - merged[f"{name}.weight"]).abs().max()) <= 1e-6, name
            checked += 1
        assert checked > 0, "nothing was left to the per-forward LowVramPatch path"
    finally:
        low.unpatch_model()


@pytest.mark.parametrize("first,second", [("lokr", "locon"), ("locon", "full"), ("loha", "oft"), ("glora", "ia3")])
def test_stacking_bypass_equals_merged(binding, flux2_files, first, second):
    """Two files stacked in bypass == the same two merged in order. (Algorithms that read W in bypass, GLoRA and
    DoRA, see the base weight there, not W plus the earlier file: only as the first of a stack are they equal.)"""
    twin, files = flux2_files
    apply = binding("apply").apply_lycoris
    inputs = twin.make_inputs(0)
    base = twin.run_comfy(twin.fresh_comfy_patcher(), inputs)
    outs = {}
    for mode in ("merged", "bypass"):
        p1, _ = apply(twin.fresh_comfy_patcher(), files[first], 0.7, mode)
        p2, _ = apply(p1, files[second], -0.5, mode)
        outs[mode] = twin.run_comfy(p2, inputs)
        single = twin.run_comfy(p1, inputs)
        assert float((outs[mode] - single).abs().max()) > 1e-4, "the second file had no effect"
    assert rel(outs["bypass"], outs["merged"], base) <= BOUND


def test_bypass_clone_chain_and_switching(binding, flux2_files):
    twin, files = flux2_files
    apply = binding("apply").apply_lycoris
    inputs = twin.make_inputs(0)
    p0 = twin.fresh_comfy_patcher()
    base = twin.run_comfy(p0, inputs)
    p1, _ = apply(p0, files["locon"], 1.0, "bypass")
    p2, _ = apply(p1, files["lokr"], 1.0, "bypass")
    p2_clone = p2.clone()
    out2 = twin.run_comfy(p2, inputs)
    out1 = twin.run_comfy(p1, inputs)
    assert torch.equal(twin.run_comfy(p0, inputs), base)
    assert torch.equal(twin.run_comfy(p2_clone, inputs), out2)
    assert torch.equal(twin.run_comfy(p1, inputs), out1)
    assert float((out2 - out1).abs().max()) > 1e-4 and float((out1 - base).abs().max()) > 1e-4


@pytest.mark.parametrize("mode", ["merged", "bypass"])
@pytest.mark.parametrize("name", ["lokr", "locon", "dora", "ia3", "oft", "boft", "full", "loha", "glora"])
def test_strength_node_equals_loader_strength(binding, flux2_files, mode, name):
    """Loader at s1 then the strength node at s2 == loader at s2 (non-linear algorithms included)."""
    twin, files = flux2_files
    apply = binding("apply").apply_lycoris
    set_strength = binding("strength").set_strength
    inputs = twin.make_inputs(0)
    base = twin.run_comfy(twin.fresh_comfy_patcher(), inputs)
    direct, _ = apply(twin.fresh_comfy_patcher(), files[name], -0.6, mode)
    loaded, _ = apply(twin.fresh_comfy_patcher(), files[name], 1.0, mode)
    swept = set_strength(loaded, -0.6)
    out_direct, out_swept = twin.run_comfy(direct, inputs), twin.run_comfy(swept, inputs)
    assert rel(out_swept, out_direct, base) <= BOUND
    # and the strength node did not change the model it was given
    assert rel(twin.run_comfy(loaded, inputs), twin.run_comfy(apply(twin.fresh_comfy_patcher(), files[name], 1.0,
                                                                       mode)[0], inputs), base) <= BOUND


def test_dylora_rank_cap(binding, flux2_files, tmp_path):
    """rank_cap keeps the first k ranks with the full-rank scale alpha/r: a rank-8 LoCon capped at 4 equals the
    hand-truncated rank-4 file (whose scale is alpha/4) at half the strength; a cap >= the rank changes nothing."""
    from safetensors.torch import load_file, save_file

    twin, files = flux2_files
    apply = binding("apply").apply_lycoris
    inputs = twin.make_inputs(0)
    base = twin.run_comfy(twin.fresh_comfy_patcher(), inputs)
    sd = load_file(files["locon"])
    truncated = {k: (v[:, :4].contiguous() if k.endswith("lora_up.weight") else
                     v[:4].contiguous() if k.endswith("lora_down.weight") else v) for k, v in sd.items()}
    save_file(truncated, str(tmp_path / "truncated.safetensors"))
    capped, report = apply(twin.fresh_comfy_patcher(), files["locon"], 0.8, "bypass", rank_cap=4)
    assert "rank cap" in report.text()
    by_hand, _ = apply(twin.fresh_comfy_patcher(), str(tmp_path / "truncated.safetensors"), 0.4, "bypass")
    full, _ = apply(twin.fresh_comfy_patcher(), files["locon"], 0.8, "bypass")
    uncapped, _ = apply(twin.fresh_comfy_patcher(), files["locon"], 0.8, "bypass", rank_cap=8)
    out_capped, out_full = twin.run_comfy(capped, inputs), twin.run_comfy(full, inputs)
    assert rel(out_capped, twin.run_comfy(by_hand, inputs), base) <= BOUND
    assert rel(twin.run_comfy(uncapped, inputs), out_full, base) <= BOUND
    assert float((out_capped - out_full).abs().max()) > 1e-3
