# SPDX-License-Identifier: GPL-3.0-or-later
"""Weight-level parity of LycorisLoader for every key-map zoo family (issue 4).

For each family of ``test_keymap_zoo`` (a tiny diffusers model and a ComfyUI twin holding the same weights, converted
by diffusers' own converters): a LyCORIS file made by lycoris-lora 4.1.3 on the diffusers model the way SimpleTuner
makes it (``make_lycoris``; targets = the family's diffusers transformer-block classes, or every Linear/Conv with
``apply_preset=None``), loaded with the pack's ``apply_lycoris`` at m = 0.7:

- ``merged``: ZERO unmatched modules; after ``patch_model()`` every module of the network lands on a ComfyUI weight
  (narrowed by the target's offset, patch function undone) equal to the diffusers side's ``W + ΔW·m``, where ΔW is
  computed from the live LyCORIS module (and, for Linear modules, checked against a rebuild-forward identity probe
  through the live module, so the oracle itself is not a formula we trust blindly);
- ``bypass``: every hooked ComfyUI module's output for a random input equals the module's op with the merged weight
  (``F.linear`` / conv), per target slice;
- a file made on one family, loaded on a model of an unrelated naming scheme, raises NoMatchingKeysError naming the
  family its keys look like (``keymaps.guess_family``), and that family's candidates include the true one.

Error measure: max|ours - ref| / max|ref - base| on each module (slice) <= 1e-5.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import test_keymap_zoo as zoo  # same module object pytest collects (rootdir-relative "prepend" import)
from lyco_testkit.lycoris_files import make_lycoris

BOUND = 1e-5
M = 0.7
CPU = torch.device("cpu")
# adapter weights ~ N(0, 0.2): ΔW is a sizeable fraction of W (~0.1), so the adapter's effect on a layer's output
# stands far above fp32 rounding of the output itself (the bypass check compares fp32 forwards)
WEIGHT_STD = 0.2

# diffusers 0.42 classes of each family's transformer blocks (what a SimpleTuner preset for the family targets)
BLOCK_TARGETS = {
    "flux2": ["Flux2TransformerBlock", "Flux2SingleTransformerBlock"],
    "flux1": ["FluxTransformerBlock", "FluxSingleTransformerBlock"],
    "chroma": ["ChromaTransformerBlock", "ChromaSingleTransformerBlock"],
    "sdxl": ["Transformer2DModel", "ResnetBlock2D"],
    "sd15": ["Transformer2DModel", "ResnetBlock2D"],
    "sd3": ["JointTransformerBlock"],
    "auraflow": ["AuraFlowJointTransformerBlock", "AuraFlowSingleTransformerBlock"],
    "pixart": ["BasicTransformerBlock"],
    "qwen_image": ["QwenImageTransformerBlock"],
    "hidream": ["HiDreamBlock"],
    "lumina2": ["Lumina2TransformerBlock"],
    "z_image": ["ZImageTransformerBlock"],
    "wan": ["WanTransformerBlock"],
    "hunyuan_video": ["HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock",
                      "HunyuanVideoIndividualTokenRefinerBlock"],
    "ltxv": ["LTXVideoTransformerBlock"],
}
FAMILIES = list(zoo.BUILDERS)
assert set(FAMILIES) == set(BLOCK_TARGETS), "a zoo family without block targets here"

# case -> config (apply_preset "blocks" is replaced by the family's BLOCK_TARGETS)
CASES = {
    "lokr": {"algo": "lokr", "multiplier": 1.0, "linear_dim": 8, "linear_alpha": 4, "factor": 4,
             "apply_preset": "blocks"},
    "locon": {"algo": "locon", "multiplier": 1.0, "linear_dim": 8, "linear_alpha": 4, "apply_preset": "blocks"},
    # every Linear/Conv of the model (embedders, final layers, norm_out.linear with its swap_scale_shift target)
    "locon-all": {"algo": "locon", "multiplier": 1.0, "linear_dim": 8, "linear_alpha": 4, "apply_preset": None},
    "lokr-full-all": {"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 4,
                      "full_matrix": True, "apply_preset": None},
}

_ARTIFACTS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny ops: torch's intra-op threads only spin against each other on shared cores (7x slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
RESULTS: dict = {}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("family_parity")

    def get(family: str, case: str):
        if (family, case) not in _ARTIFACTS:
            cfg = dict(CASES[case])
            if cfg["apply_preset"] == "blocks":
                cfg["apply_preset"] = {"target_module": list(BLOCK_TARGETS[family])}
            else:
                cfg.pop("apply_preset")
            _ARTIFACTS[(family, case)] = make_lycoris(zoo.twin(family).diffusers_model,
                                                      base / f"{family}-{case}.safetensors", cfg, seed=7,
                                                      weight_std=WEIGHT_STD, family=family)
        return _ARTIFACTS[(family, case)]

    yield get
    _ARTIFACTS.clear()


# ---------------------------------------------------------------------------------------------------- oracle
def delta_weight(lora, m: float) -> torch.Tensor:
    """ΔW·m of one live LyCORIS module, in the diffusers module's weight shape (fp32)."""
    name = type(lora).__name__
    with torch.no_grad():
        if name == "LokrModule":
            # get_diff_weight scales twice (kron_weight already applies self.scale); the forward uses get_weight once
            d = lora.get_weight(lora.shape) * lora.scalar
        elif name == "LoConModule":
            d = lora.get_diff_weight(multiplier=1.0)[0]
        else:
            raise AssertionError(f"no oracle for {name}")
    return (d * m).reshape(lora.org_module[0].weight.shape).float()


def probe_delta(lora, m: float) -> torch.Tensor:
    """ΔW·m of a Linear module by a rebuild forward of the identity through the live module."""
    org = lora.org_module[0]
    eye = torch.eye(org.in_features)
    old = lora.multiplier
    lora.multiplier = m
    try:
        with torch.no_grad():
            y = lora(eye) - lora.org_forward(eye)
    finally:
        lora.multiplier = old
    return y.T.contiguous()


def rel(ours: torch.Tensor, ref: torch.Tensor, base: torch.Tensor) -> float:
    effect = float((ref - base).abs().max())
    assert effect > 1e-6, "the adapter has no effect here: the check could not fail"
    return float((ours - ref).abs().max()) / effect


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN == NaN: buffers the zoo never fills (e.g. SD3's pos_embed) hold uninitialised memory."""
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))


def comfy_slice(target, full: torch.Tensor) -> torch.Tensor:
    """The part of a ComfyUI weight one target covers, in the diffusers layout (function undone: involutions)."""
    w = full.narrow(*target.offset) if target.offset is not None else full
    return w if target.function is None else target.function(w)


def module_op(module, x, weight, bias):
    if isinstance(module, torch.nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return module._conv_forward(x, weight, bias)
    raise AssertionError(f"unexpected hooked module {type(module).__name__}")


def probe_input(module, g):
    if isinstance(module, torch.nn.Linear):
        return torch.randn(2, 3, module.in_features, generator=g)
    if isinstance(module, torch.nn.Conv1d):
        return torch.randn(1, module.in_channels, 8, generator=g)
    if isinstance(module, torch.nn.Conv2d):
        return torch.randn(1, module.in_channels, 8, 8, generator=g)
    if isinstance(module, torch.nn.Conv3d):
        return torch.randn(1, module.in_channels, 2, 8, 8, generator=g)
    raise AssertionError(f"unexpected hooked module {type(module).__name__}")


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_weight_parity(binding, files, family, case):
    apply = binding("apply").apply_lycoris
    keymaps = binding("keymaps")
    tw = zoo.twin(family)
    art = files(family, case)
    lora_by_name = {lora.lora_name: lora for lora in art.network.loras}
    patcher = tw.comfy_patcher
    km = keymaps.build_key_map(patcher)
    model = patcher.model

    # the diffusers side: W + ΔW·m for every module (the oracle checked against a rebuild forward on Linears)
    expected, base_w = {}, {}
    for name, lora in lora_by_name.items():
        w0 = lora.org_module[0].weight.detach().float()
        d = delta_weight(lora, M)
        if isinstance(lora.org_module[0], torch.nn.Linear):
            p = probe_delta(lora, M)
            assert float((p - d).abs().max()) <= 1e-6 * max(float(d.abs().max()), 1e-12) + 1e-7, \
                f"{name}: oracle ΔW disagrees with the live module's forward"
        expected[name], base_w[name] = w0 + d, w0

    # merged
    patched, report = apply(patcher, str(art.path), M, "merged")
    assert report.unmatched == [], report.text()
    assert report.placed == report.total == len(lora_by_name), report.text()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    worst_merged, merged_full = 0.0, {}
    patched.patch_model(device_to=CPU)
    try:
        sd = model.state_dict()
        for name in lora_by_name:
            t = km[name]
            ours = comfy_slice(t, sd[t.key].float())
            base = comfy_slice(t, before[t.key].float())
            assert torch.equal(base, base_w[name]), f"{name}: twin weights differ before patching"
            err = rel(ours, expected[name], base_w[name])
            worst_merged = max(worst_merged, err)
            assert err <= BOUND, f"{family}/{case} merged {name} -> {t.key} {t.offset}: error {err:.2e}"
            merged_full[t.key] = sd[t.key].detach().clone()
    finally:
        patched.unpatch_model(device_to=CPU)
    after = model.state_dict()
    changed = [k for k, v in before.items() if not same(after[k], v)]
    assert not changed, f"unpatch_model did not restore the twin: {changed[:5]}"

    # bypass: each hooked module's output vs its op with the merged weight, per slice
    patched, report = apply(patcher, str(art.path), M, "bypass")
    assert report.unmatched == [], report.text()
    rec = binding("apply").loaded_lycoris(patched)[-1]
    targets = rec.injection.targets
    assert sum(len(v) for v in targets.values()) == len(lora_by_name)
    g = torch.Generator().manual_seed(11)
    worst_bypass = 0.0
    patched.patch_model(device_to=CPU)
    try:
        import comfy.utils

        for mpath, slices in targets.items():
            module = comfy.utils.get_attr(model, mpath)
            x = probe_input(module, g)
            bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
            with torch.no_grad():
                y = module(x)
                b64 = None if bias is None else bias.double()
                ref = module_op(module, x.double(), merged_full[mpath + ".weight"].double(), b64)
                y0 = module_op(module, x.double(), module.weight.detach().double(), b64)
            y = y.double()
            ch = 1 if not isinstance(module, torch.nn.Linear) else -1
            for s in slices:
                n = (lambda a: a) if s.offset is None else (lambda a, o=s.offset: a.narrow(ch, o[1], o[2]))
                err = rel(n(y), n(ref), n(y0))
                worst_bypass = max(worst_bypass, err)
                assert err <= BOUND, f"{family}/{case} bypass {mpath} {s.offset}: error {err:.2e}"
    finally:
        patched.unpatch_model(device_to=CPU)
    after = model.state_dict()
    assert all(same(after[k], v) for k, v in before.items()), "bypass changed the twin's weights"

    RESULTS[(family, case)] = (len(lora_by_name), report.placed, worst_merged, worst_bypass)
    print(f"family-parity {family:14s} {case:14s} placed {report.placed}/{len(lora_by_name)} "
          f"merged {worst_merged:.1e} bypass {worst_bypass:.1e}")


# A model whose naming scheme is unrelated to the file's family (nothing can match by accident)
WRONG_HOST = {
    "flux2": "sdxl", "flux1": "sdxl", "chroma": "sdxl", "sdxl": "flux2", "sd15": "flux1", "sd3": "wan",
    "auraflow": "sd15", "pixart": "flux2", "qwen_image": "sdxl", "hidream": "sd15", "lumina2": "sdxl",
    "z_image": "sdxl", "wan": "sdxl", "hunyuan_video": "sd15", "ltxv": "sdxl",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_family_names_the_family(binding, pack_mod, files, family):
    keymaps = binding("keymaps")
    errors = pack_mod("lycoris_core.errors")
    art = files(family, "locon")  # block targets: top-level names (proj_out...) are shared across families
    names = [lora.lora_name for lora in art.network.loras]
    assert family in keymaps.candidate_families(names), (family, keymaps.candidate_families(names))
    looks = keymaps.guess_family(names)
    host = zoo.twin(WRONG_HOST[family]).comfy_patcher
    with pytest.raises(errors.NoMatchingKeysError) as ei:
        binding("apply").apply_lycoris(host, str(art.path), 1.0, "merged")
    msg = str(ei.value)
    assert f"look like a {looks} model" in msg, msg
