# SPDX-License-Identifier: GPL-3.0-or-later
"""Key maps against diffusers twins, one tiny model pair per family.

For every family: a tiny diffusers model (the module tree SimpleTuner names LyCORIS modules after) and a tiny
ComfyUI model of the same shape. The ComfyUI weights are random; diffusers' OWN original->diffusers converter
(``diffusers.loaders.single_file_utils.convert_*``, independent of our tables) turns the ComfyUI state dict into
the diffusers one, which must load strictly. Then every Linear/Conv (and norm) module path ``d`` of the diffusers
twin must resolve, as ``lycoris_<d with . -> _>``, to a target whose weight, narrowed by the offset (and passed
through the patch function), EQUALS the diffusers module's weight: right slice, right layout, not just present.

Families whose diffusers converter cannot run on a tiny model fall back to a shape check (noted per family).
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))

try:
    from lyco_testkit.host import comfyui_unavailable_reason, import_comfy
except Exception as e:  # pragma: no cover - test kit missing
    pytest.skip(f"lyco_testkit not importable: {e}", allow_module_level=True)

_reason = comfyui_unavailable_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

comfy = import_comfy()
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402

pytestmark = pytest.mark.binding
CPU = torch.device("cpu")


def load_keymaps():
    """Import lycoris_comfy/keymaps on its own (as ComfyUI would import a pack: by file location)."""
    name = "lyco_keymaps_under_test"
    if name in sys.modules:
        return sys.modules[name]
    folder = REPO / "lycoris_comfy" / "keymaps"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


KM = load_keymaps()


# ---------------------------------------------------------------------------------------------------------------
# builders


def comfy_patcher(config_cls, unet_config, seed=0):
    """A tiny ComfyUI model (programmatic route, comfyui-host.md section 9.6) with random weights, wrapped."""
    mc = config_cls(unet_config)
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, "")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.diffusion_model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.1)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def comfy_sd(patcher):
    pre = "diffusion_model."
    return {k[len(pre):]: v.clone() for k, v in patcher.model.state_dict().items() if k.startswith(pre)}


def patched_converter(name, **replace):
    """A diffusers single-file converter with hard-coded widths replaced (e.g. ``inner_dim = 3072``)."""
    import diffusers.loaders.single_file_utils as sfu

    fn = getattr(sfu, name)
    if not replace:
        return fn
    src = inspect.getsource(fn)
    for old, new in replace.items():
        assert old in src, f"{name}: {old!r} not in source (diffusers changed?)"
        src = src.replace(old, new)
    ns = dict(sfu.__dict__)
    exec(compile(src, f"<patched {name}>", "exec"), ns)
    return ns[name]


class Twin:
    """A diffusers model and a ComfyUI patcher holding the same weights (when ``exact``)."""

    def __init__(self, family, diffusers_model, patcher, exact, note=""):
        self.family = family
        self.diffusers_model = diffusers_model
        self.comfy_patcher = patcher
        self.exact = exact
        self.note = note


def _load_into(dmodel, dsd):
    missing, unexpected = dmodel.load_state_dict(dsd, strict=False)
    assert not missing and not unexpected, f"converter mismatch: missing {missing[:8]}, unexpected {unexpected[:8]}"


def build_flux2(seed=0):
    from diffusers import Flux2Transformer2DModel

    d = Flux2Transformer2DModel(patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=24, timestep_guidance_channels=256,
                                axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True)
    cfg = dict(image_model="flux2", axes_dim=[4, 4, 4, 4], num_heads=2, mlp_ratio=3.0, theta=2000, out_channels=8,
               global_modulation=True, vec_in_dim=None, mlp_silu_act=True, qkv_bias=False, ops_bias=False,
               default_ref_method="index", ref_index_scale=10.0, patch_size=1, in_channels=8, hidden_size=32,
               context_in_dim=24, depth=2, depth_single_blocks=2, guidance_embed=True)
    p = comfy_patcher(comfy.supported_models.Flux2, cfg, seed)
    conv = patched_converter("convert_flux2_transformer_checkpoint_to_diffusers")
    _load_into(d, conv(comfy_sd(p)))
    return Twin("flux2", d, p, exact=True)


def build_flux1(seed=0):
    from diffusers import FluxTransformer2DModel

    d = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=12,
                               guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    cfg = dict(image_model="flux", axes_dim=[4, 6, 6], num_heads=2, mlp_ratio=4.0, theta=10000, out_channels=4,
               qkv_bias=True, patch_size=2, in_channels=4, hidden_size=32, context_in_dim=24, vec_in_dim=12, depth=2,
               depth_single_blocks=2, guidance_embed=True)
    p = comfy_patcher(comfy.supported_models.Flux, cfg, seed)
    conv = patched_converter("convert_flux_transformer_checkpoint_to_diffusers",
                             **{"inner_dim = 3072": "inner_dim = 32"})
    _load_into(d, conv(comfy_sd(p)))
    return Twin("flux1", d, p, exact=True)


def build_chroma(seed=0):
    from diffusers import ChromaTransformer2DModel

    d = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                 axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=40,
                                 approximator_layers=2)
    cfg = dict(image_model="chroma", axes_dim=[4, 6, 6], num_heads=2, mlp_ratio=4.0, theta=10000, out_channels=16,
               qkv_bias=True, patch_size=1, in_channels=16, hidden_size=32, context_in_dim=24, depth=2,
               depth_single_blocks=2, in_dim=8, out_dim=32, hidden_dim=40, n_layers=2)
    p = comfy_patcher(comfy.supported_models.Chroma, cfg, seed)
    conv = patched_converter("convert_chroma_transformer_checkpoint_to_diffusers",
                             **{"inner_dim = 3072": "inner_dim = 32"})
    _load_into(d, conv(comfy_sd(p)))
    return Twin("chroma", d, p, exact=True)


BUILDERS = {
    "flux2": build_flux2,
    "flux1": build_flux1,
    "chroma": build_chroma,
}

_TWINS = {}


def twin(family):
    if family not in _TWINS:
        logging.disable(logging.WARNING)
        try:
            _TWINS[family] = BUILDERS[family]()
        finally:
            logging.disable(logging.NOTSET)
    return _TWINS[family]


def lycoris_modules(dmodel):
    """``{diffusers path: weight}`` of the modules LyCORIS wraps: Linear/Conv (+ affine norms, for train_norm)."""
    nn = torch.nn
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    out = {}
    for name, m in dmodel.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and (isinstance(m, kinds) or type(m).__name__ == "RMSNorm"):
            out[name] = w.detach()
    return out


def check_twin(tw):
    """Returns (resolved, total, problems) for every diffusers module of the twin."""
    km = KM.build_key_map(tw.comfy_patcher)
    sd = tw.comfy_patcher.model.state_dict()
    problems, ok = [], 0
    mods = lycoris_modules(tw.diffusers_model)
    for path, w in mods.items():
        name = "lycoris_" + path.replace(".", "_")
        t = km.get(name)
        if t is None:
            problems.append(f"{name}: not resolved")
            continue
        cw = sd[t.key]
        if t.offset is not None:
            cw = cw.narrow(*t.offset)
        if t.function is not None:
            cw = t.function(cw)
        if tuple(cw.shape) != tuple(w.shape):
            problems.append(f"{name} -> {t.key} {t.offset}: shape {tuple(cw.shape)} != {tuple(w.shape)}")
            continue
        if tw.exact and not torch.equal(cw, w.to(cw.dtype)):
            problems.append(f"{name} -> {t.key} {t.offset}: values differ")
            continue
        ok += 1
    return ok, len(mods), problems


@pytest.mark.parametrize("family", list(BUILDERS))
def test_every_diffusers_module_resolves_to_equal_weights(family):
    tw = twin(family)
    ok, total, problems = check_twin(tw)
    assert not problems, f"{family}: {ok}/{total} resolved; first problems:\n" + "\n".join(problems[:20])
    assert total > 0


@pytest.mark.parametrize("family", list(BUILDERS))
def test_family_of_twin(family):
    assert KM.family_of(twin(family).comfy_patcher) == family


@pytest.mark.parametrize("family", list(BUILDERS))
def test_all_targets_exist_in_state_dict(family):
    p = twin(family).comfy_patcher
    km = KM.build_key_map(p)
    shapes = {k: tuple(v.shape) for k, v in p.model.state_dict().items()}
    for name, t in km.items():
        assert t.key in shapes, (name, t.key)
        if t.offset is not None:
            dim, start, length = t.offset
            assert start + length <= shapes[t.key][dim], (name, t)
        if t.bias_key is not None:
            assert t.bias_key in shapes, (name, t.bias_key)
