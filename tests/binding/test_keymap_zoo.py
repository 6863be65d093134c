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


def apply_comfy_map(sd_map, dsd):
    """diffusers state dict -> ComfyUI, through a comfy.utils *_to_diffusers map (convert_diffusers_mmdit's loop,
    with the model's real width instead of the converter's default)."""
    import comfy.utils

    out = {}
    for dk, t in sd_map.items():
        if dk not in dsd:
            continue
        w = dsd[dk]
        if isinstance(t, str):
            out[t] = w.clone()
            continue
        key, offset = t[0], t[1]
        fn = t[2] if len(t) > 2 else (lambda a: a)
        if offset is None:
            out[key] = fn(w).clone()
            continue
        full = out.get(key)
        need = offset[1] + offset[2]
        if full is None or full.shape[offset[0]] < need:
            shape = list(w.shape)
            shape[offset[0]] = need
            new = torch.zeros(shape, dtype=w.dtype)
            if full is not None:
                new.narrow(offset[0], 0, full.shape[offset[0]]).copy_(full)
            full = new
        full.narrow(*offset).copy_(fn(w))
        out[key] = full
    return out


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


def _unet_pair(family, dcfg, ucfg, seed):
    from diffusers import UNet2DConditionModel

    d = UNet2DConditionModel(**dcfg)
    cls = {"sdxl": comfy.supported_models.SDXL, "sd15": comfy.supported_models.SD15,
           "sd2": comfy.supported_models.SD20}[family]
    p = comfy_patcher(cls, ucfg, seed)
    conv = patched_converter("convert_ldm_unet_checkpoint")
    ckpt = {"model.diffusion_model." + k: v for k, v in comfy_sd(p).items()}
    _load_into(d, conv(ckpt, dict(d.config)))
    return Twin(family, d, p, exact=True)


def build_sdxl(seed=0):
    # SDXL's real layout, narrowed: level 0 without attention, levels 1-2 with 1/2 transformer blocks, mid with 2
    dcfg = dict(sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(32, 64, 64), layers_per_block=2, transformer_layers_per_block=(0, 1, 2),
                attention_head_dim=(1, 1, 1), cross_attention_dim=48, use_linear_projection=True,
                norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=16,
                projection_class_embeddings_input_dim=24 + 6 * 16)
    ucfg = dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=32,
                num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 2], transformer_depth=[0, 0, 1, 1, 2, 2],
                transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=2,
                use_linear_in_transformer=True, context_dim=48, num_heads=1, num_head_channels=-1,
                use_spatial_transformer=True, legacy=False, num_classes="sequential", adm_in_channels=24 + 6 * 16,
                use_temporal_attention=False, use_temporal_resblock=False)
    return _unet_pair("sdxl", dcfg, ucfg, seed)


def build_sd15(seed=0):
    # SD 1.5's real layout (3 attention levels + a plain one), narrowed
    dcfg = dict(sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                block_out_channels=(32, 32, 64, 64), layers_per_block=1, attention_head_dim=2,
                cross_attention_dim=48, use_linear_projection=False, norm_num_groups=32)
    ucfg = dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=32,
                num_res_blocks=[1, 1, 1, 1], channel_mult=[1, 1, 2, 2], transformer_depth=[1, 1, 1, 0],
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                use_linear_in_transformer=False, context_dim=48, num_heads=2, num_head_channels=-1,
                use_spatial_transformer=True, legacy=False, adm_in_channels=None, use_temporal_attention=False,
                use_temporal_resblock=False)
    return _unet_pair("sd15", dcfg, ucfg, seed)


def build_sd3(seed=0):
    # SD3.5-medium-like: qk RMS norms and a dual-attention (attn2) layer 0; depth 2 -> hidden 128 (ComfyUI: 64/depth)
    from diffusers import SD3Transformer2DModel

    d = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                              num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=128,
                              pooled_projection_dim=24, out_channels=16, pos_embed_max_size=8,
                              dual_attention_layers=(0,), qk_norm="rms_norm")
    ucfg = dict(in_channels=16, patch_size=2, out_channels=16, depth=2, input_size=None, adm_in_channels=24,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": 32, "out_features": 128}},
                num_patches=64, pos_embed_max_size=8, qk_norm="rms", pos_embed_scaling_factor=None,
                x_block_self_attn_layers=[0])
    p = comfy_patcher(comfy.supported_models.SD3, ucfg, seed)
    conv = patched_converter("convert_sd3_transformer_checkpoint_to_diffusers")
    _load_into(d, conv(comfy_sd(p)))
    return Twin("sd3", d, p, exact=True)


def build_auraflow(seed=0):
    from diffusers import AuraFlowTransformer2DModel

    d = AuraFlowTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1,
                                   num_single_dit_layers=2, attention_head_dim=32, num_attention_heads=2,
                                   joint_attention_dim=24, caption_projection_dim=64, out_channels=4,
                                   pos_embed_max_size=64)
    ucfg = dict(in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=3, n_double_layers=1, n_heads=2,
                global_conddim=64, cond_seq_dim=24, max_seq=64)
    p = comfy_patcher(comfy.supported_models.AuraFlow, ucfg, seed)
    conv = patched_converter("convert_auraflow_transformer_checkpoint_to_diffusers")
    _load_into(d, conv(comfy_sd(p)))
    return Twin("auraflow", d, p, exact=True)


def build_pixart(seed=0):
    # no diffusers converter for PixArt in the package: ComfyUI's own convert_diffusers_mmdit is the reference
    from diffusers import PixArtTransformer2DModel
    import comfy.model_detection

    d = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8,
                                 num_layers=2, cross_attention_dim=64, norm_type="ada_norm_single",
                                 caption_channels=24, use_additional_conditions=False, sample_size=8, patch_size=2,
                                 interpolation_scale=1)
    ucfg = dict(image_model="pixart_sigma", num_heads=2, patch_size=2, hidden_size=64, in_channels=4, depth=2,
                model_max_length=16, input_size=16, pe_interpolation=1, micro_condition=False, caption_channels=24)
    p = comfy_patcher(comfy.supported_models.PixArtSigma, ucfg, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in d.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
    csd = apply_comfy_map(comfy.utils.pixart_to_diffusers({"depth": 2, "hidden_size": 64}), d.state_dict())
    missing, unexpected = p.model.diffusion_model.load_state_dict(csd, strict=False)
    assert not unexpected, unexpected
    assert all(not k.endswith("weight") or "pos_embed" in k for k in missing), missing
    return Twin("pixart", d, p, exact=True, note="reference: ComfyUI's convert_diffusers_mmdit")


def _identity_pair(family, d, config_cls, ucfg, seed, converter=None, **replace):
    p = comfy_patcher(config_cls, ucfg, seed)
    sd = comfy_sd(p)
    if converter:
        sd = patched_converter(converter, **replace)(sd)
    _load_into(d, sd)
    return Twin(family, d, p, exact=True)


def build_qwen_image(seed=0):
    # ComfyUI's Qwen-Image keeps diffusers' module names (no diffusers converter exists; identity is the check)
    from diffusers import QwenImageTransformer2DModel

    kw = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=(4, 6, 6))
    d = QwenImageTransformer2DModel(**kw)
    return _identity_pair("qwen_image", d, comfy.supported_models.QwenImage, dict(image_model="qwen_image", **kw),
                          seed)


def build_hidream(seed=0):
    from diffusers import HiDreamImageTransformer2DModel

    kw = dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
              num_attention_heads=2, caption_channels=[24, 16], text_emb_dim=12, num_routed_experts=2,
              num_activated_experts=2, axes_dims_rope=(8, 8), max_resolution=(16, 16), llama_layers=[0, 1])
    d = HiDreamImageTransformer2DModel(**kw)
    return _identity_pair("hidream", d, comfy.supported_models.HiDream, dict(image_model="hidream", **kw), seed,
                          "convert_hidream_transformer_to_diffusers")


def build_lumina2(seed=0):
    # grouped-query attention (4 q heads, 2 kv heads), like Lumina-Image 2.0's 24/8
    from diffusers import Lumina2Transformer2DModel

    d = Lumina2Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, hidden_size=64, num_layers=2,
                                  num_refiner_layers=1, num_attention_heads=4, num_kv_heads=2, multiple_of=16,
                                  ffn_dim_multiplier=None, axes_dim_rope=(4, 6, 6), axes_lens=(16, 16, 16),
                                  cap_feat_dim=24)
    ucfg = dict(image_model="lumina2", patch_size=2, in_channels=4, dim=64, cap_feat_dim=24, n_layers=2,
                n_refiner_layers=1, qk_norm=True, n_heads=4, n_kv_heads=2, multiple_of=16, ffn_dim_multiplier=4.0,
                axes_dims=[4, 6, 6], axes_lens=[16, 16, 16], rope_theta=10000.0)
    return _identity_pair("lumina2", d, comfy.supported_models.Lumina2, ucfg, seed, "convert_lumina2_to_diffusers",
                          **{"q_dim = 2304": "q_dim = 64", "k_dim = v_dim = 768": "k_dim = v_dim = 32"})


def build_z_image(seed=0):
    from diffusers import ZImageTransformer2DModel

    d = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=64, n_layers=2,
                                 n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=24, axes_dims=[4, 6, 6],
                                 axes_lens=[16, 16, 16])
    ucfg = dict(image_model="lumina2", patch_size=2, in_channels=4, dim=64, cap_feat_dim=24, n_layers=2,
                n_refiner_layers=1, qk_norm=True, n_heads=4, n_kv_heads=4, axes_dims=[4, 6, 6],
                axes_lens=[16, 16, 16], rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True,
                time_scale=1000.0, pad_tokens_multiple=32, multiple_of=2)
    # below dim 1024 the two t_embedder MLPs differ in width (ComfyUI: min(dim, 1024) hidden, 256 out; diffusers:
    # 1024 hidden, min(dim, 256) out); at real sizes both are (1024, 256) / (256, 1024): give the twin those
    d.t_embedder.mlp[0] = torch.nn.Linear(256, 64)
    d.t_embedder.mlp[2] = torch.nn.Linear(64, 256)
    return _identity_pair("z_image", d, comfy.supported_models.ZImage, ucfg, seed,
                          "convert_z_image_transformer_checkpoint_to_diffusers")


def build_wan(seed=0):
    # Wan 2.1 i2v (has the image embedder and the cross-attention k_img / v_img); t2v is a subset
    from diffusers import WanTransformer3DModel

    d = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                              out_channels=4, text_dim=24, freq_dim=32, ffn_dim=48, num_layers=2, image_dim=1280,
                              added_kv_proj_dim=32)
    ucfg = dict(image_model="wan2.1", model_type="i2v", patch_size=(1, 2, 2), in_dim=4, dim=32, ffn_dim=48,
                freq_dim=32, text_dim=24, out_dim=4, num_heads=2, num_layers=2, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6)
    return _identity_pair("wan", d, comfy.supported_models.WAN21_I2V, ucfg, seed,
                          "convert_wan_transformer_to_diffusers")


# ComfyUI renames HunyuanVideo's original keys on load (supported_models.HunyuanVideo.process_unet_state_dict);
# undo that so diffusers' converter (which reads original keys) can run
_HUNYUAN_COMFY_TO_ORIGINAL = (
    ("txt_in.t_embedder.in_layer.", "txt_in.t_embedder.mlp.0."),
    ("txt_in.t_embedder.out_layer.", "txt_in.t_embedder.mlp.2."),
    ("txt_in.c_embedder.in_layer.", "txt_in.c_embedder.linear_1."),
    ("txt_in.c_embedder.out_layer.", "txt_in.c_embedder.linear_2."),
    ("time_in.in_layer.", "time_in.mlp.0."), ("time_in.out_layer.", "time_in.mlp.2."),
    ("guidance_in.in_layer.", "guidance_in.mlp.0."), ("guidance_in.out_layer.", "guidance_in.mlp.2."),
    ("_mod.lin.", "_mod.linear."), ("_attn.qkv.", "_attn_qkv."), ("_attn.proj.", "_attn_proj."),
    ("_attn.norm.query_norm.scale", "_attn_q_norm.weight"), ("_attn.norm.key_norm.scale", "_attn_k_norm.weight"),
    (".norm.query_norm.scale", ".q_norm.weight"), (".norm.key_norm.scale", ".k_norm.weight"),
    (".modulation.lin.", ".modulation.linear."), ("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2."),
)


def hunyuan_comfy_to_original(sd):
    out = {}
    for k, v in sd.items():
        for a, b in _HUNYUAN_COMFY_TO_ORIGINAL:
            if a.startswith("mlp.") and ("_embedder." in k or "time_in." in k or "guidance_in." in k):
                continue
            k = k.replace(a, b)
        out[k] = v
    return out


def build_hunyuan_video(seed=0):
    from diffusers import HunyuanVideoTransformer3DModel

    d = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                       num_layers=1, num_single_layers=1, num_refiner_layers=2, mlp_ratio=4.0,
                                       patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=24,
                                       pooled_projection_dim=12, rope_axes_dim=(4, 6, 6))
    ucfg = dict(image_model="hunyuan_video", in_channels=4, patch_size=[1, 2, 2], out_channels=4, vec_in_dim=12,
                axes_dim=[4, 6, 6], meanflow=False, context_in_dim=24, hidden_size=32, mlp_ratio=4.0, num_heads=2,
                depth=1, depth_single_blocks=1, theta=256, qkv_bias=True, byt5=False, guidance_embed=True,
                use_cond_type_embedding=False, vision_in_dim=None)
    p = comfy_patcher(comfy.supported_models.HunyuanVideo, ucfg, seed)
    conv = patched_converter("convert_hunyuan_video_transformer_to_diffusers",
                             **{"hidden_size = 3072": "hidden_size = 32"})
    _load_into(d, conv(hunyuan_comfy_to_original(comfy_sd(p))))
    return Twin("hunyuan_video", d, p, exact=True)


def build_ltxv(seed=0):
    from diffusers import LTXVideoTransformer3DModel

    d = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16,
                                   cross_attention_dim=24, num_layers=2, caption_channels=20)
    ucfg = dict(image_model="ltxv", in_channels=8, cross_attention_dim=24, attention_head_dim=16,
                num_attention_heads=2, caption_channels=20, num_layers=2)
    return _identity_pair("ltxv", d, comfy.supported_models.LTXV, ucfg, seed,
                          "convert_ltx_transformer_checkpoint_to_diffusers")


BUILDERS = {
    "flux2": build_flux2,
    "flux1": build_flux1,
    "chroma": build_chroma,
    "sdxl": build_sdxl,
    "sd15": build_sd15,
    "sd3": build_sd3,
    "auraflow": build_auraflow,
    "pixart": build_pixart,
    "qwen_image": build_qwen_image,
    "hidream": build_hidream,
    "lumina2": build_lumina2,
    "z_image": build_z_image,
    "wan": build_wan,
    "hunyuan_video": build_hunyuan_video,
    "ltxv": build_ltxv,
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
