# SPDX-License-Identifier: GPL-3.0-or-later
"""Twin models: a tiny diffusers denoiser and its ComfyUI counterpart with the SAME weights (fp32, CPU).

The diffusers side is what SimpleTuner trains and validates (LyCORIS keys are its module paths); the ComfyUI side
is what the pack patches. With no adapter both agree to float rounding (``tests/twins/test_twins.py`` prints the
max abs diff), so an adapter applied on each side can be compared end to end (``oracle.py``).

Families (every config is explicit and programmatic: ComfyUI's auto-detection pins full-size Flux heads/axes and
SD/SDXL model_channels 320, comfyui-host.md §9.5-9.6):

``flux2`` (Flux.2 Klein-like: no guidance embedding)
    diffusers ``Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=2, num_single_layers=2,
    attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
    mlp_ratio=3.0, axes_dims_rope=(8, 8, 8, 8), rope_theta=2000, eps=1e-6, guidance_embeds=False)``: hidden 64.
    ComfyUI ``comfy.supported_models.Flux2`` -> ``comfy.model_base.Flux2`` -> ``comfy.ldm.flux.model.Flux`` with
    ``FLUX2_UNET_CONFIG`` (image_model "flux2", hidden 64, heads 2, axes [8,8,8,8]: hidden/heads == sum(axes) == 32,
    global_modulation, mlp_silu_act, no biases). Weights: :func:`convert.flux2_diffusers_to_comfy` (§4.4).
    Latent (B, 128, H, W); tokens = pixels (patch 1). ``model_base.Flux2`` front-pads the context to 512 tokens,
    so :meth:`Twin.make_inputs` makes 512-token contexts (zeros first) and both sides see the same sequence.
``flux1`` (Flux.1 dev-like: guidance embedding)
    diffusers ``FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
    attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
    guidance_embeds=True, axes_dims_rope=(8, 12, 12))``; ComfyUI ``comfy.supported_models.Flux`` ->
    ``comfy.model_base.Flux`` with ``FLUX1_UNET_CONFIG`` (patch 2, in/out 16 latent channels, vec_in_dim 16).
    Weights: ComfyUI's ``convert_diffusers_mmdit`` / ``flux_to_diffusers``. Latent (B, 16, H, W); diffusers sees
    the 2x2-packed tokens (B, H/2*W/2, 64) in ComfyUI's ``(c ph pw)`` order.
``sdxl``
    diffusers ``UNet2DConditionModel`` with 2 CrossAttn levels (block_out_channels (64, 128), layers_per_block 1,
    transformer_layers_per_block (1, 2), heads (1, 2) = 64-channel heads, cross_attention_dim 64, linear proj,
    addition_embed_type "text_time" with a 32-dim pooled embedding, mid block with 2 transformer layers);
    ComfyUI ``comfy.supported_models.SDXL`` -> ``comfy.model_base.SDXL`` (EPS) with ``SDXL_UNET_CONFIG``
    (model_channels 64, adm_in_channels 32 + 6*256; the stock class forces num_head_channels 64, hence 64/128
    channels). Weights: ``comfy.utils.unet_to_diffusers(unet_config)``.
``sd15``
    diffusers ``UNet2DConditionModel`` with 2 CrossAttn levels (block_out_channels (32, 64), layers_per_block 1,
    8 heads, cross_attention_dim 64, conv proj_in/proj_out, mid block with 1 transformer layer); ComfyUI
    ``comfy.supported_models.SD15`` -> ``comfy.model_base.BaseModel`` (EPS) with ``SD15_UNET_CONFIG``.

Conventions (comfyui-host.md §5.4, §9.6): ComfyUI's Flux ``timestep(σ) = σ`` and ``timestep_embedding`` multiplies
by 1000; diffusers Flux/Flux 2 multiply the given timestep (and guidance) by 1000 internally, so both get σ.
img ids are (index 0, row, col[, 0]); Flux 2 txt ids have the token index on axis 3; Flux 1 txt ids are zeros.
SD/SDXL: σ is taken from ComfyUI's own ``model_sampling.sigmas[t]``, so ComfyUI's nearest-index timestep is
exactly the integer ``t`` diffusers gets, and diffusers' ``sample`` is ComfyUI's ``calculate_input``:
``x / sqrt(σ² + 1)``. Outputs are the raw model prediction (ε for SD, velocity for Flux) in ComfyUI's latent layout
(B, C, H, W) on both sides.

:meth:`Twin.run_comfy` goes through ComfyUI's real sampling stack (``CFGGuider.sample`` at cfg 1 with a one-call
sampler: ``prepare_model_patcher`` merges the patcher's wrappers, ``load_models_gpu`` patches weights and runs
injections, ``pre_run``, ``process_conds``/``extra_conds``, ``calc_cond_batch``, ``apply_model``), and captures the
``diffusion_model`` output with a forward hook, so APPLY_MODEL / DIFFUSION_MODEL wrappers, object patches,
weight patches and forward-hook injections all take part.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from . import convert

FAMILIES = ("flux2", "flux1", "sdxl", "sd15")

# ------------------------------------------------------------------------------------------------ configs
FLUX2_DIFFUSERS_CONFIG = dict(
    patch_size=1, in_channels=128, out_channels=None, num_layers=2, num_single_layers=2, attention_head_dim=32,
    num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(8, 8, 8, 8), rope_theta=2000, eps=1e-6, guidance_embeds=False,
)
# what comfy.model_detection.detect_unet_config would produce for a Flux 2 checkpoint, made tiny (§4.2)
FLUX2_UNET_CONFIG = dict(
    image_model="flux2", axes_dim=[8, 8, 8, 8], num_heads=2, mlp_ratio=3.0, theta=2000, out_channels=128,
    global_modulation=True, vec_in_dim=None, mlp_silu_act=True, qkv_bias=False, ops_bias=False,
    default_ref_method="index", ref_index_scale=10.0, patch_size=1, in_channels=128, hidden_size=64,
    context_in_dim=32, depth=2, depth_single_blocks=2, guidance_embed=False,
)
FLUX2_TEXT_LEN = 512  # comfy.model_base.Flux2.extra_conds pads cross_attn (at the front) to 512 tokens

FLUX1_DIFFUSERS_CONFIG = dict(
    patch_size=1, in_channels=64, out_channels=None, num_layers=2, num_single_layers=2, attention_head_dim=32,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),
)
FLUX1_UNET_CONFIG = dict(
    image_model="flux", axes_dim=[8, 12, 12], num_heads=2, mlp_ratio=4.0, theta=10000, out_channels=16,
    qkv_bias=True, patch_size=2, in_channels=16, hidden_size=64, context_in_dim=32, vec_in_dim=16, depth=2,
    depth_single_blocks=2, guidance_embed=True,
)

SDXL_POOLED_DIM = 32
SDXL_DIFFUSERS_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128), layers_per_block=1, transformer_layers_per_block=(1, 2),
    attention_head_dim=(1, 2),  # diffusers' name for the head COUNT: 64-channel heads, like ComfyUI's SDXL
    cross_attention_dim=64, use_linear_projection=True, norm_num_groups=32,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * 256,
)
SDXL_UNET_CONFIG = dict(
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=64,
    num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 2], transformer_depth_output=[1, 1, 2, 2],
    transformer_depth_middle=2, use_linear_in_transformer=True, context_dim=64, num_heads=-1,
    num_head_channels=64, use_spatial_transformer=True, legacy=False, num_classes="sequential",
    adm_in_channels=SDXL_POOLED_DIM + 6 * 256, use_temporal_attention=False, use_temporal_resblock=False,
)

SD15_DIFFUSERS_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=64,
    use_linear_projection=False, norm_num_groups=32,
)
SD15_UNET_CONFIG = dict(
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=32,
    num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
    transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=64, num_heads=8,
    num_head_channels=-1, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
    use_temporal_attention=False, use_temporal_resblock=False,
)

# latent (C, H, W) and text length per family (context width is the model's context dim)
_LATENT = {"flux2": (128, 4, 4), "flux1": (16, 8, 8), "sdxl": (4, 16, 16), "sd15": (4, 16, 16)}
_TEXT_LEN = {"flux2": 8, "flux1": 8, "sdxl": 8, "sd15": 8}


# ------------------------------------------------------------------------------------------------ host import
def import_comfy():
    """ComfyUI first on sys.path, CPU mode (lyco_testkit.host.import_comfy); returns the ``comfy`` package."""
    from . import host

    return host.import_comfy(cpu=True)


# ------------------------------------------------------------------------------------------------ building
def _seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Deterministic, non-degenerate weights: matrices keep the (seeded) default init; 1-D norm scales become
    1 + 0.1·N(0,1) and biases 0.02·N(0,1), so norm/bias mappings are exercised too."""
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
                if "norm" in name and not name.endswith("bias"):
                    p.copy_(1.0 + 0.1 * noise)
                else:
                    p.copy_(0.02 * noise)


def build_diffusers_model(family: str, seed: int = 0) -> torch.nn.Module:
    """The twin's diffusers model (fp32, eval, CPU, requires_grad False), deterministic in ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "flux2":
            model = diffusers.Flux2Transformer2DModel(**FLUX2_DIFFUSERS_CONFIG)
        elif family == "flux1":
            model = diffusers.FluxTransformer2DModel(**FLUX1_DIFFUSERS_CONFIG)
        else:
            cfg = SDXL_DIFFUSERS_CONFIG if family == "sdxl" else SD15_DIFFUSERS_CONFIG
            model = diffusers.UNet2DConditionModel(**cfg)
    _seeded_init(model, seed)
    model = model.eval()  # built in fp32 (`.to(float32)` would only trigger a diffusers warning)
    model.requires_grad_(False)
    return model


def unet_config_for(family: str) -> dict:
    return copy.deepcopy({"flux2": FLUX2_UNET_CONFIG, "flux1": FLUX1_UNET_CONFIG, "sdxl": SDXL_UNET_CONFIG,
                          "sd15": SD15_UNET_CONFIG}[family])


def comfy_state_dict(family: str, diffusers_sd: dict) -> dict:
    """diffusers state dict -> ComfyUI ``diffusion_model`` state dict for ``family``."""
    uc = unet_config_for(family)
    if family == "flux2":
        return convert.flux2_diffusers_to_comfy(diffusers_sd, uc["depth"], uc["depth_single_blocks"],
                                                uc["hidden_size"], uc["guidance_embed"])
    if family == "flux1":
        import_comfy()
        return convert.flux1_diffusers_to_comfy(diffusers_sd)
    import_comfy()
    return convert.unet_diffusers_to_comfy(diffusers_sd, uc)


def _model_config(family: str):
    import_comfy()
    import comfy.supported_models as sm

    cls = {"flux2": sm.Flux2, "flux1": sm.Flux, "sdxl": sm.SDXL, "sd15": sm.SD15}[family]
    mc = cls(unet_config_for(family))
    mc.set_inference_dtype(torch.float32, None)
    return mc


def comfy_patcher_from_state_dict(family: str, comfy_sd: dict):
    """A fresh CPU fp32 ``ModelPatcher`` around ``supported_models.<family>(unet_config).get_model({})`` loaded
    (strictly) with ``comfy_sd``."""
    import_comfy()
    import comfy.model_patcher

    mc = _model_config(family)
    model = mc.get_model({}, "")
    missing, unexpected = model.diffusion_model.load_state_dict(comfy_sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{family}: ComfyUI twin state dict mismatch: missing={missing[:8]} "
                           f"unexpected={unexpected[:8]}")
    model = model.to(torch.float32).eval()
    model.diffusion_model.requires_grad_(False)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@functools.lru_cache(maxsize=16)
def _cached_comfy_sd(family: str, seed: int) -> dict:
    sd = build_diffusers_model(family, seed).state_dict()
    return {k: v.detach().clone() for k, v in comfy_state_dict(family, sd).items()}


def build_comfy_twin(family: str, seed: int = 0):
    """Only the ComfyUI side (for the test-only loader node): a fresh ``ModelPatcher`` each call, weights equal
    to ``build_twin(family, seed).diffusers_model``'s (converted once per process and cached)."""
    sd = _cached_comfy_sd(family, seed)
    return comfy_patcher_from_state_dict(family, {k: v.clone() for k, v in sd.items()})


# ------------------------------------------------------------------------------------------------ the twin
@dataclass
class Twin:
    """A diffusers model and its ComfyUI twin with identical weights. See the module docstring."""

    family: str
    seed: int
    diffusers_model: torch.nn.Module
    comfy_patcher: Any
    diffusers_config: dict
    unet_config: dict
    _pristine: torch.nn.Module = field(repr=False, default=None)
    _comfy_sd: dict = field(repr=False, default=None)

    # -------------------------------------------------------------- models
    def pristine_diffusers_model(self) -> torch.nn.Module:
        """A fresh deep copy of the diffusers model as built (never touched by adapters)."""
        return copy.deepcopy(self._pristine)

    def comfy_state_dict(self) -> dict:
        """A copy of the ComfyUI ``diffusion_model`` weights as converted (the live model's tensors may hold a
        patched clone's weights until ComfyUI unpatches them)."""
        return {k: v.clone() for k, v in self._comfy_sd.items()}

    def fresh_comfy_patcher(self):
        """A fresh ModelPatcher (its own model object) with the twin's weights: no shared patches, wrappers or
        injections. ``comfy_patcher.clone()`` is the usual way; this is for tests that mutate the model itself."""
        return comfy_patcher_from_state_dict(self.family, self.comfy_state_dict())

    # -------------------------------------------------------------- inputs
    def make_inputs(self, seed: int = 0, *, batch: int = 1, sigma: float | None = None,
                    t: int | None = None) -> dict:
        """One set of inputs, deterministic in ``seed``.

        Keys: ``x`` latent (B, C, H, W) in ComfyUI's layout (the noisy latent; SD's ``calculate_input`` scaling
        is applied by each runner), ``sigma`` (B,) float tensor, ``timestep`` (what the diffusers model gets:
        σ for flow models, the integer t for SD/SDXL), ``tlora_t`` (SimpleTuner's T-LoRA timestep: 1000·σ for
        flow models, the discrete t for SD/SDXL; lycoris-format §4.4-4.5), ``context`` (B, L, D),
        ``pooled`` (flux1: vec_in, sdxl: text_embeds; else None), ``guidance`` (flux1 only), ``size_cond``
        (sdxl: height, width, crop_h, crop_w, target_height, target_width in pixels).
        Flow σ defaults to U(0.2, 0.9); SD t defaults to U{100..900}.
        """
        g = torch.Generator().manual_seed(10_007 + seed)
        fam = self.family
        c, h, w = _LATENT[fam]
        x = torch.randn((batch, c, h, w), generator=g)
        ctx_dim = self.unet_config["context_in_dim"] if fam.startswith("flux") else self.unet_config["context_dim"]
        text = torch.randn((batch, _TEXT_LEN[fam], ctx_dim), generator=g)
        inputs: dict = {"family": fam, "x": x, "pooled": None, "guidance": None, "size_cond": None}
        if fam.startswith("flux"):
            if sigma is None:
                sigma = 0.2 + 0.7 * float(torch.rand((), generator=g))
            sig = torch.full((batch,), float(sigma), dtype=torch.float32)
            inputs.update(sigma=sig, timestep=sig.clone(), tlora_t=1000.0 * float(sigma))
            if fam == "flux2":
                ctx = torch.zeros((batch, FLUX2_TEXT_LEN, ctx_dim))
                ctx[:, FLUX2_TEXT_LEN - text.shape[1]:] = text  # ComfyUI pads at the front
                inputs["context"] = ctx
            else:
                inputs["context"] = text
                inputs["pooled"] = torch.randn((batch, self.unet_config["vec_in_dim"]), generator=g)
                inputs["guidance"] = 3.5
        else:
            if t is None:
                t = int(torch.randint(100, 901, (), generator=g))
            sigmas = self.comfy_patcher.model.model_sampling.sigmas
            sig = sigmas[int(t)].detach().float().reshape(1).repeat(batch)
            inputs.update(sigma=sig, timestep=torch.full((batch,), int(t), dtype=torch.long), tlora_t=int(t))
            inputs["context"] = text
            if fam == "sdxl":
                inputs["pooled"] = torch.randn((batch, SDXL_POOLED_DIM), generator=g)
                inputs["size_cond"] = dict(height=h * 8, width=w * 8, crop_h=0, crop_w=0,
                                           target_height=h * 8, target_width=w * 8)
        return inputs

    # -------------------------------------------------------------- runners
    def run_diffusers(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        """The diffusers forward on ``inputs``; raw prediction in ComfyUI's (B, C, H, W) layout, fp32."""
        fam = self.family
        x = inputs["x"]
        b, c, h, w = x.shape
        with torch.no_grad():
            if fam == "flux2":
                tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
                ctx = inputs["context"]
                img_ids = _grid_ids(h, w, 4)
                txt_ids = torch.zeros((ctx.shape[1], 4))
                txt_ids[:, 3] = torch.arange(ctx.shape[1], dtype=torch.float32)
                out = model(hidden_states=tokens, encoder_hidden_states=ctx, timestep=inputs["timestep"],
                            img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]
                return out.transpose(1, 2).reshape(b, c, h, w).float()
            if fam == "flux1":
                tokens = _pack2(x)
                ctx = inputs["context"]
                img_ids = _grid_ids(h // 2, w // 2, 3)
                txt_ids = torch.zeros((ctx.shape[1], 3))
                guidance = torch.full((b,), float(inputs["guidance"]))
                out = model(hidden_states=tokens, encoder_hidden_states=ctx, pooled_projections=inputs["pooled"],
                            timestep=inputs["timestep"], img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                            return_dict=False)[0]
                return _unpack2(out, c, h, w).float()
            sigma = inputs["sigma"].reshape(b, 1, 1, 1)
            sample = x / torch.sqrt(sigma ** 2 + 1.0)  # ModelSamplingDiscrete EPS calculate_input
            kwargs = {}
            if fam == "sdxl":
                s = inputs["size_cond"]
                time_ids = torch.tensor([[s["height"], s["width"], s["crop_h"], s["crop_w"], s["target_height"],
                                          s["target_width"]]], dtype=torch.float32).repeat(b, 1)
                kwargs["added_cond_kwargs"] = {"text_embeds": inputs["pooled"], "time_ids": time_ids}
            out = model(sample, inputs["timestep"], encoder_hidden_states=inputs["context"], return_dict=False,
                        **kwargs)[0]
            return out.float()

    def comfy_positive(self, inputs: dict) -> list:
        """The CONDITIONING list (``[[cross_attn, {...}]]``) a ComfyUI node graph would carry for ``inputs``."""
        # model_base.Flux.encode_adm reads kwargs["pooled_output"] unconditionally (None for Flux 2's encoder)
        extra: dict = {"pooled_output": inputs.get("pooled")}
        if inputs.get("guidance") is not None:
            extra["guidance"] = float(inputs["guidance"])
        if inputs.get("size_cond"):
            extra.update(inputs["size_cond"])
        return [[inputs["context"], extra]]

    def run_comfy(self, patcher, inputs: dict, *, return_denoised: bool = False):
        """ComfyUI's forward on ``inputs`` through the real sampling stack (module docstring); returns the raw
        ``diffusion_model`` output (B, C, H, W) fp32, or ``(raw, denoised)`` with ``return_denoised``."""
        raw, denoised = comfy_forward(patcher, inputs["x"], inputs["sigma"], self.comfy_positive(inputs))
        return (raw, denoised) if return_denoised else raw


def _grid_ids(h: int, w: int, n_axes: int) -> torch.Tensor:
    ids = torch.zeros((h, w, n_axes))
    ids[..., 1] = torch.arange(h, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(w, dtype=torch.float32)[None, :]
    return ids.reshape(h * w, n_axes)


def _pack2(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2*W/2, C*4) in ComfyUI's/diffusers' ``(c ph pw)`` order."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack2(t: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    b = t.shape[0]
    return t.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def comfy_forward(patcher, x: torch.Tensor, sigma: torch.Tensor, positive: list):
    """One model evaluation through ``comfy.samplers.CFGGuider.sample`` (cfg 1, positive only) with a sampler that
    makes exactly one call at ``sigma`` on ``x``. Returns ``(raw diffusion_model output, denoised)``."""
    import_comfy()
    import comfy.samplers

    captured: dict = {}
    sig = sigma.reshape(-1).float()

    def one_call(model, noise, sigmas, extra_args=None, callback=None, disable=None, **_):
        captured["denoised"] = model(x.to(noise.device), sig.to(noise.device), **(extra_args or {}))
        return captured["denoised"]

    def hook(_module, _args, out):
        captured.setdefault("raw", out)

    guider = comfy.samplers.CFGGuider(patcher)
    guider.inner_set_conds({"positive": positive})
    guider.set_cfg(1.0)
    handle = patcher.model.diffusion_model.register_forward_hook(hook)
    try:
        sigmas = torch.tensor([float(sig[0]), 0.0])
        zeros = torch.zeros_like(x)
        guider.sample(zeros, zeros, comfy.samplers.KSAMPLER(one_call), sigmas, seed=0, disable_pbar=True)
    finally:
        handle.remove()
    if "raw" not in captured:
        raise RuntimeError("the diffusion model was not called")
    return captured["raw"].detach().float().cpu(), captured["denoised"].detach().float().cpu()


def build_twin(family: str, seed: int = 0) -> Twin:
    """Both sides of ``family`` (see the module docstring) with identical weights, deterministic in ``seed``."""
    model = build_diffusers_model(family, seed)
    pristine = copy.deepcopy(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    csd = comfy_state_dict(family, sd)
    patcher = comfy_patcher_from_state_dict(family, {k: v.clone() for k, v in csd.items()})
    dcfg = {"flux2": FLUX2_DIFFUSERS_CONFIG, "flux1": FLUX1_DIFFUSERS_CONFIG, "sdxl": SDXL_DIFFUSERS_CONFIG,
            "sd15": SD15_DIFFUSERS_CONFIG}[family]
    return Twin(family=family, seed=seed, diffusers_model=model, comfy_patcher=patcher,
                diffusers_config=copy.deepcopy(dcfg), unet_config=unet_config_for(family), _pristine=pristine,
                _comfy_sd=csd)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a-b| / max|b| (b the reference)."""
    return max_abs_diff(a, b) / max(float(b.float().abs().max()), 1e-12)


__all__ = ["FAMILIES", "Twin", "build_twin", "build_comfy_twin", "build_diffusers_model", "comfy_state_dict",
           "comfy_patcher_from_state_dict", "comfy_forward", "unet_config_for", "max_abs_diff", "rel_diff",
           "import_comfy"]
