# SPDX-License-Identifier: GPL-3.0-or-later
"""diffusers -> ComfyUI weight conversion for the twin models (tests/lyco_testkit/twins.py).

Pure torch + (for flux1 / UNets) ComfyUI's own key maps; no model is built here.

- :func:`flux2_key_map` / :func:`flux2_diffusers_to_comfy`: diffusers ``Flux2Transformer2DModel`` -> the BFL
  names of ComfyUI's ``comfy.ldm.flux.model.Flux`` with ``image_model="flux2"`` (comfyui-host.md §4.4). ComfyUI
  0.3.75 has no Flux 2 entry in ``flux_to_diffusers``, and ``convert_diffusers_mmdit`` treats any dict with
  ``x_embedder.weight`` as Flux 1 (it reads ``x_embedder.bias``, which Flux 2 lacks -> KeyError), so we carry our own.
- :func:`flux1_diffusers_to_comfy`: ComfyUI's ``comfy.model_detection.convert_diffusers_mmdit`` (which uses
  ``comfy.utils.flux_to_diffusers``).
- :func:`unet_diffusers_to_comfy`: ComfyUI's ``comfy.utils.unet_to_diffusers(unet_config)`` map, inverted.

The key maps have ComfyUI's ``flux_to_diffusers`` shape: ``{diffusers_key: comfy_key}`` or
``{diffusers_key: (comfy_key, (dim, start, length) | None[, fn])}``.
"""
from __future__ import annotations

import torch


def swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous emits [scale | shift]; BFL's LastLayer expects [shift | scale]. Involution."""
    a, b = weight.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def flux2_key_map(depth: int, depth_single_blocks: int, hidden_size: int, guidance_embed: bool = False) -> dict:
    """diffusers Flux 2 parameter key -> ComfyUI (BFL) key, with row offsets for the fused qkv (no biases: Flux 2
    has ``bias=False`` everywhere). ``mlp_ratio`` doesn't appear: the fused ``to_qkv_mlp_proj`` maps whole."""
    h = hidden_size
    m: dict = {}
    for i in range(depth):
        d, c = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for j, p in enumerate(("to_q", "to_k", "to_v")):
            m[f"{d}.attn.{p}.weight"] = (f"{c}.img_attn.qkv.weight", (0, j * h, h))
        for j, p in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
            m[f"{d}.attn.{p}.weight"] = (f"{c}.txt_attn.qkv.weight", (0, j * h, h))
        m.update({
            f"{d}.attn.to_out.0.weight": f"{c}.img_attn.proj.weight",
            f"{d}.attn.to_add_out.weight": f"{c}.txt_attn.proj.weight",
            f"{d}.attn.norm_q.weight": f"{c}.img_attn.norm.query_norm.scale",
            f"{d}.attn.norm_k.weight": f"{c}.img_attn.norm.key_norm.scale",
            f"{d}.attn.norm_added_q.weight": f"{c}.txt_attn.norm.query_norm.scale",
            f"{d}.attn.norm_added_k.weight": f"{c}.txt_attn.norm.key_norm.scale",
            # SwiGLU halves are [gate | up] in both worlds: no swap
            f"{d}.ff.linear_in.weight": f"{c}.img_mlp.0.weight",
            f"{d}.ff.linear_out.weight": f"{c}.img_mlp.2.weight",
            f"{d}.ff_context.linear_in.weight": f"{c}.txt_mlp.0.weight",
            f"{d}.ff_context.linear_out.weight": f"{c}.txt_mlp.2.weight",
        })
    for i in range(depth_single_blocks):
        d, c = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        m.update({
            f"{d}.attn.to_qkv_mlp_proj.weight": f"{c}.linear1.weight",  # rows [q|k|v|gate|up] in both
            f"{d}.attn.to_out.weight": f"{c}.linear2.weight",
            f"{d}.attn.norm_q.weight": f"{c}.norm.query_norm.scale",
            f"{d}.attn.norm_k.weight": f"{c}.norm.key_norm.scale",
        })
    m.update({
        "x_embedder.weight": "img_in.weight",
        "context_embedder.weight": "txt_in.weight",
        "proj_out.weight": "final_layer.linear.weight",
        "norm_out.linear.weight": ("final_layer.adaLN_modulation.1.weight", None, swap_scale_shift),
        "double_stream_modulation_img.linear.weight": "double_stream_modulation_img.lin.weight",
        "double_stream_modulation_txt.linear.weight": "double_stream_modulation_txt.lin.weight",
        "single_stream_modulation.linear.weight": "single_stream_modulation.lin.weight",
        "time_guidance_embed.timestep_embedder.linear_1.weight": "time_in.in_layer.weight",
        "time_guidance_embed.timestep_embedder.linear_2.weight": "time_in.out_layer.weight",
    })
    if guidance_embed:
        m["time_guidance_embed.guidance_embedder.linear_1.weight"] = "guidance_in.in_layer.weight"
        m["time_guidance_embed.guidance_embedder.linear_2.weight"] = "guidance_in.out_layer.weight"
    return m


def apply_key_map(sd: dict, key_map: dict, strict: bool = True) -> dict:
    """Convert a state dict with a ``flux_to_diffusers``-shaped map (fused targets are assembled from row slices).
    ``strict``: every source key must be mapped and every fused target fully covered."""
    out: dict = {}
    filled: dict = {}
    unmapped = [k for k in sd if k not in key_map]
    if strict and unmapped:
        raise KeyError(f"unmapped diffusers keys: {unmapped[:8]}{' ...' if len(unmapped) > 8 else ''}")
    # total rows of each fused target
    rows: dict = {}
    for k, t in key_map.items():
        if k in sd and not isinstance(t, str) and t[1] is not None:
            dim, start, length = t[1]
            rows[t[0]] = max(rows.get(t[0], 0), start + length)
    for k, w in sd.items():
        t = key_map.get(k)
        if t is None:
            continue
        if isinstance(t, str):
            out[t] = w.clone()
            continue
        fn = t[2] if len(t) > 2 else (lambda a: a)
        if t[1] is None:
            out[t[0]] = fn(w).clone()
            continue
        dim, start, length = t[1]
        if t[0] not in out:
            shape = list(w.shape)
            shape[dim] = rows[t[0]]
            out[t[0]] = torch.zeros(shape, dtype=w.dtype, device=w.device)
            filled[t[0]] = 0
        out[t[0]].narrow(dim, start, length).copy_(fn(w))
        filled[t[0]] += length
    if strict:
        short = {k: (filled[k], rows[k]) for k in filled if filled[k] != rows[k]}
        if short:
            raise ValueError(f"fused targets not fully covered: {short}")
    return out


def flux2_diffusers_to_comfy(sd: dict, depth: int, depth_single_blocks: int, hidden_size: int,
                             guidance_embed: bool = False) -> dict:
    """diffusers Flux 2 state dict -> ComfyUI ``diffusion_model`` state dict (no prefix)."""
    return apply_key_map(sd, flux2_key_map(depth, depth_single_blocks, hidden_size, guidance_embed))


def flux1_diffusers_to_comfy(sd: dict) -> dict:
    """diffusers Flux 1 state dict -> ComfyUI ``diffusion_model`` state dict via ComfyUI's own converter
    (``convert_diffusers_mmdit`` pops what it converts: we pass a copy and fail on leftovers)."""
    import comfy.model_detection

    work = dict(sd)
    out = comfy.model_detection.convert_diffusers_mmdit(work, "")
    if out is None:
        raise ValueError("convert_diffusers_mmdit did not recognise the state dict as Flux")
    if work:
        raise KeyError(f"keys left unconverted by convert_diffusers_mmdit: {sorted(work)[:8]}")
    return out


def unet_diffusers_to_comfy(sd: dict, unet_config: dict) -> dict:
    """diffusers UNet2DConditionModel state dict -> ComfyUI ``UNetModel`` state dict, through
    ``comfy.utils.unet_to_diffusers(unet_config)`` (a ``{diffusers_key: comfy_key}`` map)."""
    import comfy.utils

    m = comfy.utils.unet_to_diffusers(unet_config)
    missing = [k for k in sd if k not in m]
    if missing:
        raise KeyError(f"diffusers UNet keys without a ComfyUI counterpart: {missing[:8]}")
    return {m[k]: v.clone() for k, v in sd.items()}
