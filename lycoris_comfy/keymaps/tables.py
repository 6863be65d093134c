# SPDX-License-Identifier: GPL-3.0-or-later
"""diffusers -> ComfyUI module tables, one per model family. Pure data: no torch, no comfy.

Each :class:`Family` names the ComfyUI class it maps onto, the diffusers class whose module paths SimpleTuner's
LyCORIS names come from (``lycoris_<diffusers path, . -> _>``), an optional ComfyUI converter from ``comfy.utils``
that is reused as is (``builtin``), and ``rows``: our own ``(diffusers template, ComfyUI template, part)`` entries,
which are applied after the builtin one and win over it.

Templates are module paths (no ``.weight``); ``{i}`` and ``{j}`` are block indices, enumerated from the ComfyUI
model's own state dict (a row whose ComfyUI template matches no module of the loaded model yields nothing).

``part`` says which rows of the ComfyUI weight the diffusers module is, for fused ComfyUI weights; sizes are read
from the loaded weight's shape, never from a hard-coded width:

- ``Q``/``K``/``V``: a fused ``[q|k|v]`` projection; q has ``in_features`` rows, k and v share the rest equally
  (so grouped-query attention, e.g. Lumina 2's 24 q / 8 kv heads, slices right).
- ``Q4``/``K4``/``V4``/``MLP4``: Flux 1 / HunyuanVideo single-block ``linear1`` = ``[q|k|v|mlp]``; q, k, v have
  ``in_features`` rows each, the mlp part is the rest (so no mlp_ratio assumption); ``QKV4``: q, k and v together.
- ``KV_K``/``KV_V``: a fused ``[k|v]`` projection split in halves (PixArt cross-attention ``kv_linear``).
- ``SWAP``: the whole weight, with ``comfy.utils.swap_scale_shift`` as the patch function (diffusers orders the
  final AdaLN as [scale, shift], ComfyUI/BFL as [shift, scale]).
- ``None``: the whole weight, same layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Q, K, V = ("qkv", 0), ("qkv", 1), ("qkv", 2)
Q4, K4, V4, MLP4 = ("qkvm", 0), ("qkvm", 1), ("qkvm", 2), ("qkvm", 3)
QKV4 = ("qkvm", "qkv")  # the first three parts of [q|k|v|mlp] together (diffusers' fused to_qkv)
KV_K, KV_V = ("kv", 0), ("kv", 1)
SWAP = "swap_scale_shift"


@dataclass(frozen=True)
class Family:
    """One model family: which ComfyUI and diffusers classes, and how module paths map between them."""

    name: str
    comfy_class: str  # comfy.model_base class (and the ldm module that builds the network)
    diffusers_class: str  # diffusers class whose module paths SimpleTuner names LyCORIS modules after
    builtin: str | None = None  # comfy.utils.<fn>(unet_config, output_prefix="diffusion_model.") reused as is
    identity: bool = False  # every ComfyUI module path is also the diffusers path (rows override)
    # names from comfy.lora.model_lora_keys_unet to drop (re.search), where ComfyUI's entry is wrong for this family
    # (e.g. Flux.1 names that ComfyUI 0.3.75 also maps on Flux 2, onto differently shaped weights)
    comfy_reject: tuple = ()
    rows: tuple = ()  # (diffusers template, ComfyUI template, part)
    notes: str = ""
    tested: bool = False  # covered by tests/binding/test_keymap_*.py against a diffusers twin
    # guess_family data, regexes over prefix-free "_"-joined names. The rows' templates are accepted already.
    accept: tuple = field(default=())  # further names a file of this family may carry (e.g. the builtin's)
    signature: tuple = field(default=())  # names (re.search) only this family's files have
    exclude: tuple = field(default=())  # names (re.search) this family's files never have


# ComfyUI (BFL) module names of Flux.1 / Flux 2 / Chroma, for guess_family
_FLUX_COMFY_ACCEPT = (
    r"double_blocks_\d+_(img|txt)_(attn_(qkv|proj|norm_(query|key)_norm)|mlp_[02]|mod_lin)",
    r"single_blocks_\d+_(linear[12]|linear1_qkv|modulation_lin|norm_(query|key)_norm)",
    r"img_in|txt_in|(time_in|vector_in|guidance_in)_(in|out)_layer|final_layer_(linear|adaLN_modulation_1)",
)

# --------------------------------------------------------------------------------------------------------------
# Flux 2  (comfy.model_base.Flux2 / comfy.ldm.flux.model.Flux with image_model="flux2";
#          diffusers.Flux2Transformer2DModel, diffusers/models/transformers/transformer_flux2.py)
# ComfyUI 0.3.75 reuses flux_to_diffusers for Flux 2, which only covers attention q/k/v/out and the norms; the
# rest (ff.*, ff_context.*, single-block to_qkv_mlp_proj / to_out, the global modulations, time_guidance_embed)
# is "lora key not loaded" there. Source of truth: diffusers' convert_flux2_transformer_checkpoint_to_diffusers
# (chunk(3) of qkv, everything else renamed; norm_out swapped) = shared/reference/comfyui-host.md section 4.4.
# Later upstream ComfyUI maps the same modules to the same targets (and renames the norm targets .scale ->
# .weight, which we follow automatically because targets are read from the model's own state dict).
FLUX2 = Family(
    name="flux2",
    comfy_class="comfy.model_base.Flux2 (comfy.ldm.flux.model.Flux, image_model='flux2')",
    diffusers_class="diffusers.Flux2Transformer2DModel",
    builtin=None,
    rows=(
        ("transformer_blocks.{i}.attn.to_q", "double_blocks.{i}.img_attn.qkv", Q),
        ("transformer_blocks.{i}.attn.to_k", "double_blocks.{i}.img_attn.qkv", K),
        ("transformer_blocks.{i}.attn.to_v", "double_blocks.{i}.img_attn.qkv", V),
        ("transformer_blocks.{i}.attn.add_q_proj", "double_blocks.{i}.txt_attn.qkv", Q),
        ("transformer_blocks.{i}.attn.add_k_proj", "double_blocks.{i}.txt_attn.qkv", K),
        ("transformer_blocks.{i}.attn.add_v_proj", "double_blocks.{i}.txt_attn.qkv", V),
        # fused-QKV spelling (diffusers fuse_qkv_projections; SimpleTuner #3222)
        ("transformer_blocks.{i}.attn.to_qkv", "double_blocks.{i}.img_attn.qkv", None),
        ("transformer_blocks.{i}.attn.to_added_qkv", "double_blocks.{i}.txt_attn.qkv", None),
        ("transformer_blocks.{i}.attn.to_out.0", "double_blocks.{i}.img_attn.proj", None),
        ("transformer_blocks.{i}.attn.to_add_out", "double_blocks.{i}.txt_attn.proj", None),
        ("transformer_blocks.{i}.attn.norm_q", "double_blocks.{i}.img_attn.norm.query_norm", None),
        ("transformer_blocks.{i}.attn.norm_k", "double_blocks.{i}.img_attn.norm.key_norm", None),
        ("transformer_blocks.{i}.attn.norm_added_q", "double_blocks.{i}.txt_attn.norm.query_norm", None),
        ("transformer_blocks.{i}.attn.norm_added_k", "double_blocks.{i}.txt_attn.norm.key_norm", None),
        # SwiGLU: both sides put the gate half first, so no swap
        ("transformer_blocks.{i}.ff.linear_in", "double_blocks.{i}.img_mlp.0", None),
        ("transformer_blocks.{i}.ff.linear_out", "double_blocks.{i}.img_mlp.2", None),
        ("transformer_blocks.{i}.ff_context.linear_in", "double_blocks.{i}.txt_mlp.0", None),
        ("transformer_blocks.{i}.ff_context.linear_out", "double_blocks.{i}.txt_mlp.2", None),
        # single blocks: same [q|k|v|gate|up] row layout on both sides
        ("single_transformer_blocks.{i}.attn.to_qkv_mlp_proj", "single_blocks.{i}.linear1", None),
        ("single_transformer_blocks.{i}.attn.to_out", "single_blocks.{i}.linear2", None),
        ("single_transformer_blocks.{i}.attn.norm_q", "single_blocks.{i}.norm.query_norm", None),
        ("single_transformer_blocks.{i}.attn.norm_k", "single_blocks.{i}.norm.key_norm", None),
        # global modulation: same shift/scale/gate order
        ("double_stream_modulation_img.linear", "double_stream_modulation_img.lin", None),
        ("double_stream_modulation_txt.linear", "double_stream_modulation_txt.lin", None),
        ("single_stream_modulation.linear", "single_stream_modulation.lin", None),
        ("time_guidance_embed.timestep_embedder.linear_1", "time_in.in_layer", None),
        ("time_guidance_embed.timestep_embedder.linear_2", "time_in.out_layer", None),
        ("time_guidance_embed.guidance_embedder.linear_1", "guidance_in.in_layer", None),
        ("time_guidance_embed.guidance_embedder.linear_2", "guidance_in.out_layer", None),
        ("x_embedder", "img_in", None),
        ("context_embedder", "txt_in", None),
        ("proj_out", "final_layer.linear", None),
        ("norm_out.linear", "final_layer.adaLN_modulation.1", SWAP),
    ),
    # flux_to_diffusers' Flux.1 names, which ComfyUI 0.3.75 also maps on Flux 2: proj_mlp as 4h rows of linear1
    # (Flux 2's mlp part is 6h), ff.net.* / proj_out onto the differently shaped SwiGLU MLP / linear2
    comfy_reject=(r"proj_mlp$", r"single_transformer_blocks[._]\d+[._]proj_out$", r"ff(_context)?[._]net[._]"),
    notes="ComfyUI 0.3.75 only loads Flux.2 [dev] (hidden 6144); Klein 4B/9B need a newer ComfyUI, the map is "
          "shape-driven and covers them too.",
    accept=_FLUX_COMFY_ACCEPT + (r"(double_stream_modulation_(img|txt)|single_stream_modulation)_lin",),
    tested=True,
    signature=(r"ff(_context)?_linear_(in|out)$", r"to_qkv_mlp_proj$", r"(double|single)_stream_modulation",
               r"time_guidance_embed", r"single_transformer_blocks_\d+_attn_to_out$"),
    exclude=(r"_(img|txt)_mod_lin$", r"^single_blocks_\d+_modulation_lin$", r"proj_mlp$", r"_norm1(_context)?_linear$",
             r"_ff(_context)?_net_", r"^vector_in_", r"^time_text_embed_", r"^distilled_guidance_layer"),
)

# --------------------------------------------------------------------------------------------------------------
# Flux.1  (comfy.model_base.Flux / comfy.ldm.flux.model.Flux; diffusers.FluxTransformer2DModel)
# comfy.utils.flux_to_diffusers is right for Flux.1 (single-block to_q/k/v/proj_mlp -> linear1 row slices,
# norm_out swapped); we re-state the fused slices shape-driven (no mlp_ratio=4 assumption).
_FLUX1_SINGLE_SLICES = (
    ("single_transformer_blocks.{i}.attn.to_q", "single_blocks.{i}.linear1", Q4),
    ("single_transformer_blocks.{i}.attn.to_k", "single_blocks.{i}.linear1", K4),
    ("single_transformer_blocks.{i}.attn.to_v", "single_blocks.{i}.linear1", V4),
    ("single_transformer_blocks.{i}.proj_mlp", "single_blocks.{i}.linear1", MLP4),
    ("single_transformer_blocks.{i}.attn.to_qkv", "single_blocks.{i}.linear1", QKV4),  # fuse_qkv_projections
)
_FLUX1_DOUBLE_SLICES = (
    ("transformer_blocks.{i}.attn.to_q", "double_blocks.{i}.img_attn.qkv", Q),
    ("transformer_blocks.{i}.attn.to_k", "double_blocks.{i}.img_attn.qkv", K),
    ("transformer_blocks.{i}.attn.to_v", "double_blocks.{i}.img_attn.qkv", V),
    ("transformer_blocks.{i}.attn.add_q_proj", "double_blocks.{i}.txt_attn.qkv", Q),
    ("transformer_blocks.{i}.attn.add_k_proj", "double_blocks.{i}.txt_attn.qkv", K),
    ("transformer_blocks.{i}.attn.add_v_proj", "double_blocks.{i}.txt_attn.qkv", V),
    ("transformer_blocks.{i}.attn.to_qkv", "double_blocks.{i}.img_attn.qkv", None),
    ("transformer_blocks.{i}.attn.to_added_qkv", "double_blocks.{i}.txt_attn.qkv", None),
)
_FLUX1_ACCEPT = _FLUX_COMFY_ACCEPT + (
    r"transformer_blocks_\d+_(norm1|norm1_context)_linear",
    r"transformer_blocks_\d+_attn_(to_out_0|to_add_out|norm_q|norm_k|norm_added_q|norm_added_k)",
    r"transformer_blocks_\d+_ff(_context)?_net_(0_proj|2)",
    r"single_transformer_blocks_\d+_(norm_linear|proj_out|attn_norm_q|attn_norm_k)",
    r"time_text_embed_(timestep|text|guidance)_embedder_linear_[12]",
    r"x_embedder|context_embedder|proj_out|norm_out_linear",
)
FLUX1 = Family(
    name="flux1",
    comfy_class="comfy.model_base.Flux (comfy.ldm.flux.model.Flux, image_model='flux')",
    diffusers_class="diffusers.FluxTransformer2DModel",
    builtin="flux_to_diffusers",
    rows=_FLUX1_DOUBLE_SLICES + _FLUX1_SINGLE_SLICES,
    accept=_FLUX1_ACCEPT,
    tested=True,
    signature=(r"single_transformer_blocks_\d+_proj_mlp$", r"single_transformer_blocks_\d+_proj_out$",
               r"transformer_blocks_\d+_ff(_context)?_net_", r"time_text_embed_", r"_(img|txt)_mod_lin$",
               r"single_blocks_\d+_modulation_lin$"),
    exclude=(r"_linear_(in|out)$", r"to_qkv_mlp_proj$", r"stream_modulation", r"^distilled_guidance_layer",
             r"^time_guidance_embed_"),
)

# --------------------------------------------------------------------------------------------------------------
# Chroma  (comfy.model_base.Chroma / comfy.ldm.chroma.model.Chroma; diffusers.ChromaTransformer2DModel)
# Flux.1 blocks without per-block modulation, plus the distilled guidance approximator. Source of truth:
# diffusers' convert_chroma_transformer_checkpoint_to_diffusers.
CHROMA = Family(
    name="chroma",
    comfy_class="comfy.model_base.Chroma (comfy.ldm.chroma.model.Chroma)",
    diffusers_class="diffusers.ChromaTransformer2DModel",
    builtin="flux_to_diffusers",
    rows=_FLUX1_DOUBLE_SLICES + _FLUX1_SINGLE_SLICES + (
        ("distilled_guidance_layer.in_proj", "distilled_guidance_layer.in_proj", None),
        ("distilled_guidance_layer.out_proj", "distilled_guidance_layer.out_proj", None),
        ("distilled_guidance_layer.layers.{i}.linear_1", "distilled_guidance_layer.layers.{i}.in_layer", None),
        ("distilled_guidance_layer.layers.{i}.linear_2", "distilled_guidance_layer.layers.{i}.out_layer", None),
        ("distilled_guidance_layer.norms.{i}", "distilled_guidance_layer.norms.{i}", None),
    ),
    accept=_FLUX1_ACCEPT + (
        r"distilled_guidance_layer_(in_proj|out_proj|layers_\d+_(linear_[12]|in_layer|out_layer)|norms_\d+)",),
    tested=True,
    signature=(r"distilled_guidance_layer",),
    exclude=(r"_linear_(in|out)$", r"to_qkv_mlp_proj$", r"stream_modulation", r"_norm1(_context)?_linear$",
             r"single_transformer_blocks_\d+_norm_linear$", r"_(img|txt)_mod_lin$", r"_modulation_lin$",
             r"^time_text_embed_", r"^(time|vector|guidance)_in_"),
)


# --------------------------------------------------------------------------------------------------------------
# SDXL and SD 1.x / 2.x UNets  (comfy.model_base.SDXL / BaseModel, comfy.ldm.modules.diffusionmodules.openaimodel
# .UNetModel; diffusers.UNet2DConditionModel). comfy.utils.unet_to_diffusers, computed from the model's own
# unet_config, is right (ComfyUI accepts lycoris_<diffusers> for UNets itself); nothing to add.
_UNET_ACCEPT = (
    r"(down_blocks_\d+|up_blocks_\d+|mid_block)_resnets_\d+_(conv1|conv2|time_emb_proj|conv_shortcut|norm1|norm2)",
    r"(down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_\d+_(proj_in|proj_out|norm)",
    r"(down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_\d+_transformer_blocks_\d+_"
    r"(attn[12]_(to_q|to_k|to_v|to_out_0|to_out)|ff_net_0_proj|ff_net_2|norm[123])",
    r"down_blocks_\d+_downsamplers_0_conv", r"up_blocks_\d+_upsamplers_0_conv",
    r"conv_in|conv_out|conv_norm_out|time_embedding_linear_[12]|add_embedding_linear_[12]|class_embedding_linear_[12]",
    # ComfyUI / kohya paths
    r"(input_blocks|output_blocks)_\d+_\d+_\w+", r"middle_block_\d+_\w+", r"(time_embed|label_emb_0|out)_\d+(_\d+)?",
)
SDXL = Family(
    name="sdxl",
    comfy_class="comfy.model_base.SDXL (comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel)",
    diffusers_class="diffusers.UNet2DConditionModel (SDXL config)",
    builtin="unet_to_diffusers",
    accept=_UNET_ACCEPT,
    tested=True,
    signature=(r"^add_embedding_", r"_transformer_blocks_[1-9]\d*_", r"^label_emb_"),
    exclude=(r"^down_blocks_3_", r"^up_blocks_3_", r"^(input|output)_blocks_(9|10|11)_"),
)
SD15 = Family(
    name="sd15",
    comfy_class="comfy.model_base.BaseModel with supported_models.SD15 / SD20 (openaimodel.UNetModel)",
    diffusers_class="diffusers.UNet2DConditionModel (SD 1.x / 2.x config)",
    builtin="unet_to_diffusers",
    accept=_UNET_ACCEPT,
    notes="SD 1.x and 2.x share all module names (family_of says sd15 / sd2).",
    tested=True,
    # by names alone SD 1.x/2.x differ from SDXL only in transformer depth (1 everywhere), the 4th level and the
    # added (pooled/size) embedding: a file of one transformer block 0 per attention is sd15
    signature=(r"_transformer_blocks_0_", r"^down_blocks_3_", r"^up_blocks_3_", r"^(input|output)_blocks_(9|10|11)_"),
    exclude=(r"_transformer_blocks_[1-9]\d*_", r"^add_embedding_", r"^label_emb_"),
)

# --------------------------------------------------------------------------------------------------------------
# SD3 / SD3.5  (comfy.model_base.SD3 / comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper;
# diffusers.SD3Transformer2DModel). comfy.utils.mmdit_to_diffusers is right (q/k/v thirds of joint qkv, SD3.5's
# attn2, qk norms, norm_out swapped); we re-state the fused slices shape-driven.
SD3 = Family(
    name="sd3",
    comfy_class="comfy.model_base.SD3 (comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper)",
    diffusers_class="diffusers.SD3Transformer2DModel",
    builtin="mmdit_to_diffusers",
    rows=(
        ("transformer_blocks.{i}.attn.to_q", "joint_blocks.{i}.x_block.attn.qkv", Q),
        ("transformer_blocks.{i}.attn.to_k", "joint_blocks.{i}.x_block.attn.qkv", K),
        ("transformer_blocks.{i}.attn.to_v", "joint_blocks.{i}.x_block.attn.qkv", V),
        ("transformer_blocks.{i}.attn.add_q_proj", "joint_blocks.{i}.context_block.attn.qkv", Q),
        ("transformer_blocks.{i}.attn.add_k_proj", "joint_blocks.{i}.context_block.attn.qkv", K),
        ("transformer_blocks.{i}.attn.add_v_proj", "joint_blocks.{i}.context_block.attn.qkv", V),
        ("transformer_blocks.{i}.attn2.to_q", "joint_blocks.{i}.x_block.attn2.qkv", Q),
        ("transformer_blocks.{i}.attn2.to_k", "joint_blocks.{i}.x_block.attn2.qkv", K),
        ("transformer_blocks.{i}.attn2.to_v", "joint_blocks.{i}.x_block.attn2.qkv", V),
    ),
    accept=(r"transformer_blocks_\d+_(norm1|norm1_context)_linear",
            r"transformer_blocks_\d+_attn2?_(to_out_0|to_add_out|norm_q|norm_k|norm_added_q|norm_added_k)",
            r"transformer_blocks_\d+_ff(_context)?_net_(0_proj|2)",
            r"pos_embed_proj|context_embedder|proj_out|norm_out_linear",
            r"time_text_embed_(timestep|text)_embedder_linear_[12]",
            r"joint_blocks_\d+_(x_block|context_block)_\w+",
            r"(x_embedder_proj|t_embedder_mlp_[02]|y_embedder_mlp_[02])",
            r"final_layer_(linear|adaLN_modulation_1)"),
    tested=True,
    signature=(r"^joint_blocks_", r"transformer_blocks_\d+_attn2_", r"^pos_embed_proj$",
               r"^time_text_embed_text_embedder"),
    exclude=(r"^single_transformer_blocks_", r"^double_blocks_", r"^single_blocks_"),
)

# --------------------------------------------------------------------------------------------------------------
# AuraFlow  (comfy.model_base.AuraFlow / comfy.ldm.aura.mmdit.MMDiT; diffusers.AuraFlowTransformer2DModel)
# comfy.utils.auraflow_to_diffusers is right; ComfyUI itself only accepts the transformer.<d> spelling.
AURAFLOW = Family(
    name="auraflow",
    comfy_class="comfy.model_base.AuraFlow (comfy.ldm.aura.mmdit.MMDiT)",
    diffusers_class="diffusers.AuraFlowTransformer2DModel",
    builtin="auraflow_to_diffusers",
    accept=(r"(joint_transformer_blocks|single_transformer_blocks)_\d+_(attn_(to_q|to_k|to_v|to_out_0|add_q_proj|"
            r"add_k_proj|add_v_proj|to_add_out)|ff(_context)?_(linear_1|linear_2|out_projection)|"
            r"norm1(_context)?_linear)",
            r"time_step_proj_linear_[12]|context_embedder|pos_embed_proj|proj_out|norm_out_linear",
            r"(double_layers|single_layers)_\d+_\w+",
            r"t_embedder_mlp_[02]|cond_seq_linear|init_x_linear|final_linear|modF_1"),
    tested=True,
    signature=(r"^joint_transformer_blocks_", r"_ff(_context)?_out_projection$", r"^(double|single)_layers_"),
)

# --------------------------------------------------------------------------------------------------------------
# PixArt Sigma / Alpha  (comfy.model_base.PixArt / comfy.ldm.pixart.pixartms.PixArtMS;
# diffusers.PixArtTransformer2DModel). comfy.utils.pixart_to_diffusers is right (attn1 q/k/v thirds of
# attn.qkv, attn2 k/v halves of cross_attn.kv_linear); we re-state the fused slices shape-driven.
PIXART = Family(
    name="pixart",
    comfy_class="comfy.model_base.PixArt (comfy.ldm.pixart.pixartms.PixArtMS)",
    diffusers_class="diffusers.PixArtTransformer2DModel",
    builtin="pixart_to_diffusers",
    rows=(
        ("transformer_blocks.{i}.attn1.to_q", "blocks.{i}.attn.qkv", Q),
        ("transformer_blocks.{i}.attn1.to_k", "blocks.{i}.attn.qkv", K),
        ("transformer_blocks.{i}.attn1.to_v", "blocks.{i}.attn.qkv", V),
        ("transformer_blocks.{i}.attn2.to_q", "blocks.{i}.cross_attn.q_linear", None),
        ("transformer_blocks.{i}.attn2.to_k", "blocks.{i}.cross_attn.kv_linear", KV_K),
        ("transformer_blocks.{i}.attn2.to_v", "blocks.{i}.cross_attn.kv_linear", KV_V),
    ),
    accept=(r"transformer_blocks_\d+_(attn[12]_to_out_0|ff_net_(0_proj|2))",
            r"adaln_single_(emb_(resolution_embedder|aspect_ratio_embedder|timestep_embedder)_linear_[12]|linear)",
            r"pos_embed_proj|caption_projection_linear_[12]|proj_out",
            r"blocks_\d+_(attn_(qkv|proj)|cross_attn_(q_linear|kv_linear|proj)|mlp_fc[12])",
            r"(csize_embedder|ar_embedder|t_embedder)_mlp_[02]|x_embedder_proj|y_embedder_y_proj_fc[12]",
            r"t_block_1|final_layer_linear"),
    tested=True,
    signature=(r"^adaln_single_", r"^t_block_1$", r"^blocks_\d+_cross_attn_", r"^pos_embed_proj$"),
    exclude=(r"^time_embed_", r"_norm_[qk]$", r"^patchify_proj$"),
)


# --------------------------------------------------------------------------------------------------------------
# Qwen-Image  (comfy.model_base.QwenImage / comfy.ldm.qwen_image.model.QwenImageTransformer2DModel;
# diffusers.QwenImageTransformer2DModel). ComfyUI's network keeps diffusers' module names (ComfyUI itself maps
# lycoris_<path> for it); no diffusers converter exists because there is nothing to convert.
QWEN_IMAGE = Family(
    name="qwen_image",
    comfy_class="comfy.model_base.QwenImage (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel)",
    diffusers_class="diffusers.QwenImageTransformer2DModel",
    identity=True,
    accept=(r"transformer_blocks_\d+_(attn_(to_q|to_k|to_v|to_out_0|add_q_proj|add_k_proj|add_v_proj|to_add_out|"
            r"norm_q|norm_k|norm_added_q|norm_added_k)|img_mod_1|txt_mod_1|img_mlp_net_(0_proj|2)|"
            r"txt_mlp_net_(0_proj|2))",
            r"img_in|txt_in|txt_norm|proj_out|norm_out_linear|time_text_embed_timestep_embedder_linear_[12]"),
    tested=True,
    signature=(r"_img_mod_1$", r"_txt_mod_1$", r"_(img|txt)_mlp_net_", r"^txt_norm$", r"^img_in$"),
)

# --------------------------------------------------------------------------------------------------------------
# HiDream-I1  (comfy.model_base.HiDream / comfy.ldm.hidream.model.HiDreamImageTransformer2DModel;
# diffusers.HiDreamImageTransformer2DModel). Same module names on both sides (diffusers'
# convert_hidream_transformer_to_diffusers only strips the prefix; ComfyUI maps lycoris_<path> itself).
HIDREAM = Family(
    name="hidream",
    comfy_class="comfy.model_base.HiDream (comfy.ldm.hidream.model.HiDreamImageTransformer2DModel)",
    diffusers_class="diffusers.HiDreamImageTransformer2DModel",
    identity=True,
    accept=(r"(double_stream_blocks|single_stream_blocks)_\d+_block_\w+", r"caption_projection_\d+_linear",
            r"t_embedder_timestep_embedder_linear_[12]|p_embedder_pooled_embedder_linear_[12]",
            r"x_embedder_proj|final_layer_(linear|adaLN_modulation_1)"),
    tested=True,
    signature=(r"^(double|single)_stream_blocks_", r"_ff_i_(experts|shared_experts|gate)", r"^p_embedder_"),
)

# --------------------------------------------------------------------------------------------------------------
# Lumina-Image 2.0  (comfy.model_base.Lumina2 / comfy.ldm.lumina.model.NextDiT; diffusers.Lumina2Transformer2DModel)
# ComfyUI 0.3.75 applies z_image_to_diffusers (Z-Image names, q/k/v as equal thirds) to every Lumina2-class model:
# wrong names and, with Lumina 2's grouped-query attention (24 q / 8 kv heads), wrong slices. Source of truth:
# diffusers' convert_lumina2_to_diffusers.
_LUMINA2_BLOCK = (
    ("{b}.{i}.attn.to_q", "{b}.{i}.attention.qkv", Q),
    ("{b}.{i}.attn.to_k", "{b}.{i}.attention.qkv", K),
    ("{b}.{i}.attn.to_v", "{b}.{i}.attention.qkv", V),
    ("{b}.{i}.attn.to_out.0", "{b}.{i}.attention.out", None),
    ("{b}.{i}.attn.norm_q", "{b}.{i}.attention.q_norm", None),
    ("{b}.{i}.attn.norm_k", "{b}.{i}.attention.k_norm", None),
    ("{b}.{i}.feed_forward.linear_1", "{b}.{i}.feed_forward.w1", None),
    ("{b}.{i}.feed_forward.linear_2", "{b}.{i}.feed_forward.w2", None),
    ("{b}.{i}.feed_forward.linear_3", "{b}.{i}.feed_forward.w3", None),
    ("{b}.{i}.norm2", "{b}.{i}.attention_norm2", None),
    ("{b}.{i}.ffn_norm1", "{b}.{i}.ffn_norm1", None),
    ("{b}.{i}.ffn_norm2", "{b}.{i}.ffn_norm2", None),
)


def _blocks(rows, *block_lists):
    return tuple((d.replace("{b}", b), c.replace("{b}", b), p) for b in block_lists for d, c, p in rows)


LUMINA2 = Family(
    name="lumina2",
    comfy_class="comfy.model_base.Lumina2 (comfy.ldm.lumina.model.NextDiT, z_image_modulation=False)",
    diffusers_class="diffusers.Lumina2Transformer2DModel",
    rows=_blocks(_LUMINA2_BLOCK, "layers", "noise_refiner", "context_refiner") + (
        ("layers.{i}.norm1.linear", "layers.{i}.adaLN_modulation.1", None),
        ("noise_refiner.{i}.norm1.linear", "noise_refiner.{i}.adaLN_modulation.1", None),
        ("layers.{i}.norm1.norm", "layers.{i}.attention_norm1", None),
        ("noise_refiner.{i}.norm1.norm", "noise_refiner.{i}.attention_norm1", None),
        ("context_refiner.{i}.norm1", "context_refiner.{i}.attention_norm1", None),
        ("time_caption_embed.caption_embedder.0", "cap_embedder.0", None),
        ("time_caption_embed.caption_embedder.1", "cap_embedder.1", None),
        ("time_caption_embed.timestep_embedder.linear_1", "t_embedder.mlp.0", None),
        ("time_caption_embed.timestep_embedder.linear_2", "t_embedder.mlp.2", None),
        ("x_embedder", "x_embedder", None),
        ("norm_out.linear_1", "final_layer.adaLN_modulation.1", None),
        ("norm_out.linear_2", "final_layer.linear", None),
    ),
    # z_image_to_diffusers slices Lumina 2's grouped-query qkv in equal thirds
    comfy_reject=(r"attention[._]to_[qkv]$",),
    tested=True,
    signature=(r"_attn_to_(q|k|v|out_0)$", r"_feed_forward_linear_[123]$", r"^time_caption_embed_",
               r"^norm_out_linear_[12]$",
               r"^(layers|noise_refiner)_\d+_adaLN_modulation_1$"),
    exclude=(r"_attention_to_(q|k|v)$", r"^all_x_embedder", r"^all_final_layer",
             r"^(layers|noise_refiner)_\d+_adaLN_modulation_0$"),
)

# --------------------------------------------------------------------------------------------------------------
# Z-Image  (comfy.model_base.Lumina2 / comfy.ldm.lumina.model.NextDiT with z_image_modulation=True;
# diffusers.ZImageTransformer2DModel). comfy.utils.z_image_to_diffusers is right for Z-Image (q = k = v heads);
# we re-state the fused slices shape-driven. Source of truth: convert_z_image_transformer_checkpoint_to_diffusers.
_ZIMAGE_BLOCK = (
    ("{b}.{i}.attention.to_q", "{b}.{i}.attention.qkv", Q),
    ("{b}.{i}.attention.to_k", "{b}.{i}.attention.qkv", K),
    ("{b}.{i}.attention.to_v", "{b}.{i}.attention.qkv", V),
    ("{b}.{i}.attention.to_out.0", "{b}.{i}.attention.out", None),
    ("{b}.{i}.attention.norm_q", "{b}.{i}.attention.q_norm", None),
    ("{b}.{i}.attention.norm_k", "{b}.{i}.attention.k_norm", None),
)
Z_IMAGE = Family(
    name="z_image",
    comfy_class="comfy.model_base.Lumina2 (comfy.ldm.lumina.model.NextDiT, z_image_modulation=True)",
    diffusers_class="diffusers.ZImageTransformer2DModel",
    builtin="z_image_to_diffusers",
    identity=True,
    rows=_blocks(_ZIMAGE_BLOCK, "layers", "noise_refiner", "context_refiner") + (
        ("all_x_embedder.2-1", "x_embedder", None),
        ("all_final_layer.2-1.linear", "final_layer.linear", None),
        ("all_final_layer.2-1.adaLN_modulation.1", "final_layer.adaLN_modulation.1", None),
    ),
    accept=(r"(layers|noise_refiner|context_refiner)_\d+_(attention_(qkv|out|q_norm|k_norm)|feed_forward_w[123]|"
            r"adaLN_modulation_[01]|attention_norm[12]|ffn_norm[12])",
            r"cap_embedder_[01]|t_embedder_mlp_[02]|x_embedder|final_layer_(linear|adaLN_modulation_1)"),
    tested=True,
    signature=(r"_attention_to_(q|k|v|out_0)$", r"^all_x_embedder", r"^all_final_layer",
               r"^(layers|noise_refiner)_\d+_adaLN_modulation_0$"),
    exclude=(r"_attn_to_(q|k|v)$", r"^time_caption_embed_", r"^(layers|noise_refiner)_\d+_adaLN_modulation_1$"),
)

# --------------------------------------------------------------------------------------------------------------
# Wan 2.1 / 2.2  (comfy.model_base.WAN21 / WAN22 / comfy.ldm.wan.model.WanModel (+ VACE);
# diffusers.WanTransformer3DModel / WanVACETransformer3DModel). ComfyUI 0.3.75 maps nothing (#8285).
# Source of truth: diffusers' convert_wan_transformer_to_diffusers. Note diffusers' norm2 is ComfyUI's norm3
# (the affine cross-attention norm) and vice versa.
_WAN_BLOCK = (
    ("{b}.{i}.attn1.to_q", "{b}.{i}.self_attn.q", None),
    ("{b}.{i}.attn1.to_k", "{b}.{i}.self_attn.k", None),
    ("{b}.{i}.attn1.to_v", "{b}.{i}.self_attn.v", None),
    ("{b}.{i}.attn1.to_out.0", "{b}.{i}.self_attn.o", None),
    ("{b}.{i}.attn1.norm_q", "{b}.{i}.self_attn.norm_q", None),
    ("{b}.{i}.attn1.norm_k", "{b}.{i}.self_attn.norm_k", None),
    ("{b}.{i}.attn2.to_q", "{b}.{i}.cross_attn.q", None),
    ("{b}.{i}.attn2.to_k", "{b}.{i}.cross_attn.k", None),
    ("{b}.{i}.attn2.to_v", "{b}.{i}.cross_attn.v", None),
    ("{b}.{i}.attn2.to_out.0", "{b}.{i}.cross_attn.o", None),
    ("{b}.{i}.attn2.norm_q", "{b}.{i}.cross_attn.norm_q", None),
    ("{b}.{i}.attn2.norm_k", "{b}.{i}.cross_attn.norm_k", None),
    ("{b}.{i}.attn2.add_k_proj", "{b}.{i}.cross_attn.k_img", None),
    ("{b}.{i}.attn2.add_v_proj", "{b}.{i}.cross_attn.v_img", None),
    ("{b}.{i}.attn2.norm_added_k", "{b}.{i}.cross_attn.norm_k_img", None),
    ("{b}.{i}.ffn.net.0.proj", "{b}.{i}.ffn.0", None),
    ("{b}.{i}.ffn.net.2", "{b}.{i}.ffn.2", None),
    ("{b}.{i}.norm2", "{b}.{i}.norm3", None),
)
WAN = Family(
    name="wan",
    comfy_class="comfy.model_base.WAN21 / WAN22 (comfy.ldm.wan.model.WanModel, VaceWanModel)",
    diffusers_class="diffusers.WanTransformer3DModel / WanVACETransformer3DModel",
    rows=_blocks(_WAN_BLOCK, "blocks", "vace_blocks") + (
        ("vace_blocks.{i}.proj_in", "vace_blocks.{i}.before_proj", None),
        ("vace_blocks.{i}.proj_out", "vace_blocks.{i}.after_proj", None),
        ("vace_patch_embedding", "vace_patch_embedding", None),
        ("patch_embedding", "patch_embedding", None),
        ("condition_embedder.time_embedder.linear_1", "time_embedding.0", None),
        ("condition_embedder.time_embedder.linear_2", "time_embedding.2", None),
        ("condition_embedder.time_proj", "time_projection.1", None),
        ("condition_embedder.text_embedder.linear_1", "text_embedding.0", None),
        ("condition_embedder.text_embedder.linear_2", "text_embedding.2", None),
        ("condition_embedder.image_embedder.norm1", "img_emb.proj.0", None),
        ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1", None),
        ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3", None),
        ("condition_embedder.image_embedder.norm2", "img_emb.proj.4", None),
        ("proj_out", "head.head", None),
    ),
    notes="Wan 2.2 A14B's two experts are two models; the S2V / Animate / HuMo extras keep ComfyUI's names.",
    tested=True,
    signature=(r"^blocks_\d+_attn[12]_", r"^condition_embedder_", r"^blocks_\d+_ffn_net_",
               r"^blocks_\d+_(self|cross)_attn_"),
)

# --------------------------------------------------------------------------------------------------------------
# HunyuanVideo  (comfy.model_base.HunyuanVideo / comfy.ldm.hunyuan_video.model.HunyuanVideo;
# diffusers.HunyuanVideoTransformer3DModel). ComfyUI 0.3.75 maps only diffusion-pipe's original names. Source of
# truth: diffusers' convert_hunyuan_video_transformer_to_diffusers composed with ComfyUI's own renames
# (supported_models.HunyuanVideo.process_unet_state_dict).
_HY_REFINER = "context_embedder.token_refiner.refiner_blocks.{i}"
_HY_REFINER_C = "txt_in.individual_token_refiner.blocks.{i}"
HUNYUAN_VIDEO = Family(
    name="hunyuan_video",
    comfy_class="comfy.model_base.HunyuanVideo (comfy.ldm.hunyuan_video.model.HunyuanVideo)",
    diffusers_class="diffusers.HunyuanVideoTransformer3DModel",
    rows=_FLUX1_DOUBLE_SLICES + _FLUX1_SINGLE_SLICES + (
        ("x_embedder.proj", "img_in.proj", None),
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer", None),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer", None),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer", None),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer", None),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer", None),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer", None),
        ("context_embedder.proj_in", "txt_in.input_embedder", None),
        ("context_embedder.time_text_embed.timestep_embedder.linear_1", "txt_in.t_embedder.in_layer", None),
        ("context_embedder.time_text_embed.timestep_embedder.linear_2", "txt_in.t_embedder.out_layer", None),
        ("context_embedder.time_text_embed.text_embedder.linear_1", "txt_in.c_embedder.in_layer", None),
        ("context_embedder.time_text_embed.text_embedder.linear_2", "txt_in.c_embedder.out_layer", None),
        (_HY_REFINER + ".norm1", _HY_REFINER_C + ".norm1", None),
        (_HY_REFINER + ".attn.to_q", _HY_REFINER_C + ".self_attn.qkv", Q),
        (_HY_REFINER + ".attn.to_k", _HY_REFINER_C + ".self_attn.qkv", K),
        (_HY_REFINER + ".attn.to_v", _HY_REFINER_C + ".self_attn.qkv", V),
        (_HY_REFINER + ".attn.to_out.0", _HY_REFINER_C + ".self_attn.proj", None),
        (_HY_REFINER + ".norm2", _HY_REFINER_C + ".norm2", None),
        (_HY_REFINER + ".ff.net.0.proj", _HY_REFINER_C + ".mlp.0", None),
        (_HY_REFINER + ".ff.net.2", _HY_REFINER_C + ".mlp.2", None),
        (_HY_REFINER + ".norm_out.linear", _HY_REFINER_C + ".adaLN_modulation.1", None),
        ("transformer_blocks.{i}.attn.norm_q", "double_blocks.{i}.img_attn.norm.query_norm", None),
        ("transformer_blocks.{i}.attn.norm_k", "double_blocks.{i}.img_attn.norm.key_norm", None),
        ("transformer_blocks.{i}.attn.norm_added_q", "double_blocks.{i}.txt_attn.norm.query_norm", None),
        ("transformer_blocks.{i}.attn.norm_added_k", "double_blocks.{i}.txt_attn.norm.key_norm", None),
        ("transformer_blocks.{i}.attn.to_out.0", "double_blocks.{i}.img_attn.proj", None),
        ("transformer_blocks.{i}.attn.to_add_out", "double_blocks.{i}.txt_attn.proj", None),
        ("transformer_blocks.{i}.norm1.linear", "double_blocks.{i}.img_mod.lin", None),
        ("transformer_blocks.{i}.norm1_context.linear", "double_blocks.{i}.txt_mod.lin", None),
        ("transformer_blocks.{i}.ff.net.0.proj", "double_blocks.{i}.img_mlp.0", None),
        ("transformer_blocks.{i}.ff.net.2", "double_blocks.{i}.img_mlp.2", None),
        ("transformer_blocks.{i}.ff_context.net.0.proj", "double_blocks.{i}.txt_mlp.0", None),
        ("transformer_blocks.{i}.ff_context.net.2", "double_blocks.{i}.txt_mlp.2", None),
        ("single_transformer_blocks.{i}.proj_out", "single_blocks.{i}.linear2", None),
        ("single_transformer_blocks.{i}.attn.norm_q", "single_blocks.{i}.norm.query_norm", None),
        ("single_transformer_blocks.{i}.attn.norm_k", "single_blocks.{i}.norm.key_norm", None),
        ("single_transformer_blocks.{i}.norm.linear", "single_blocks.{i}.modulation.lin", None),
        ("proj_out", "final_layer.linear", None),
        ("norm_out.linear", "final_layer.adaLN_modulation.1", SWAP),
    ),
    notes="HunyuanVideo 1.5 (a different network) is not mapped beyond ComfyUI's own names.",
    tested=True,
    signature=(r"^context_embedder_token_refiner_", r"^context_embedder_time_text_embed_", r"^x_embedder_proj$",
               r"^txt_in_individual_token_refiner_"),
)

# --------------------------------------------------------------------------------------------------------------
# LTX-Video  (comfy.model_base.LTXV / comfy.ldm.lightricks.model.LTXVModel; diffusers.LTXVideoTransformer3DModel)
# Same module names except the ones diffusers' convert_ltx_transformer_checkpoint_to_diffusers renames.
LTXV = Family(
    name="ltxv",
    comfy_class="comfy.model_base.LTXV (comfy.ldm.lightricks.model.LTXVModel)",
    diffusers_class="diffusers.LTXVideoTransformer3DModel",
    identity=True,
    rows=(
        ("proj_in", "patchify_proj", None),
        ("time_embed.emb.timestep_embedder.linear_1", "adaln_single.emb.timestep_embedder.linear_1", None),
        ("time_embed.emb.timestep_embedder.linear_2", "adaln_single.emb.timestep_embedder.linear_2", None),
        ("time_embed.linear", "adaln_single.linear", None),
        ("transformer_blocks.{i}.attn1.norm_q", "transformer_blocks.{i}.attn1.q_norm", None),
        ("transformer_blocks.{i}.attn1.norm_k", "transformer_blocks.{i}.attn1.k_norm", None),
        ("transformer_blocks.{i}.attn2.norm_q", "transformer_blocks.{i}.attn2.q_norm", None),
        ("transformer_blocks.{i}.attn2.norm_k", "transformer_blocks.{i}.attn2.k_norm", None),
    ),
    accept=(r"transformer_blocks_\d+_(attn[12]_(to_q|to_k|to_v|to_out_0)|ff_net_(0_proj|2))",
            r"caption_projection_linear_[12]|proj_out"),
    notes="LTX-2 (a different network) is not mapped beyond ComfyUI's own names.",
    tested=True,
    signature=(r"^time_embed_", r"^patchify_proj$", r"_attn[12]_(norm_[qk]|[qk]_norm)$"),
    exclude=(r"^pos_embed_proj$", r"^adaln_single_emb_(resolution|aspect_ratio)", r"^t_block_1$",
             r"_cross_attn_"),
)


ALL: tuple[Family, ...] = (FLUX2, FLUX1, CHROMA, SDXL, SD15, SD3, AURAFLOW, PIXART, QWEN_IMAGE, HIDREAM,
                           LUMINA2, Z_IMAGE, WAN, HUNYUAN_VIDEO, LTXV)
ALIASES = {"sd2": "sd15", "chroma_radiance": "chroma"}
