# SPDX-License-Identifier: GPL-3.0-or-later
"""`LycorisLoader` ("Load LyCORIS"): a LyCORIS file onto a MODEL, merged or bypass."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..lycoris_comfy.apply import MODES, apply_lycoris, strength_problem
from ..lycoris_comfy.file_cache import file_signature
from ..lycoris_comfy.paths import lycoris_name_problem, lycoris_names, resolve_lycoris_path
from . import ids


class LycorisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.LYCORIS_LOADER,
            display_name="Load LyCORIS",
            category=ids.CATEGORY,
            description=(
                "Loads a LyCORIS .safetensors file (LoCon, LoHa, LoKr, DoRA, GLoRA, IA3, OFT, BOFT, full, "
                "T-LoRA, ...) onto the model with SimpleTuner's validation maths. Merged patches the weights; "
                "bypass adds the adapter in each layer's forward (fp8/quantized bases, T-LoRA)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to apply the LyCORIS to. It is not modified."),
                io.Combo.Input("lycoris_name", options=lycoris_names(),
                               tooltip="A LyCORIS .safetensors file from models/loras (SimpleTuner writes "
                                       "pytorch_lora_weights.safetensors)."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="The LyCORIS multiplier: SimpleTuner's validation_lycoris_strength. "
                                       "Negative values invert the adapter."),
                io.Combo.Input("mode", options=list(MODES), default="auto",
                               tooltip="auto: bypass for T-LoRA files and fp8/quantized bases, merged otherwise. "
                                       "merged: patch the weights (fastest per step). bypass: compute the "
                                       "adapter in the forward, base weights untouched."),
                io.Int.Input("dylora_rank", default=0, min=0, max=65536, optional=True,
                             tooltip="DyLoRA files: use only the first N ranks of each LoCon/DyLoRA module "
                                     "(0 = all ranks). Other algorithms ignore it."),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model carrying the LyCORIS.")],
        )

    @classmethod
    def validate_inputs(cls, lycoris_name=None, strength=None, mode=None):
        # ComfyUI 0.3.75 checks neither V3 combo values nor NaN; named inputs also skip its min/max check.
        bad_mode = None if mode is None or mode in MODES else f"mode must be one of {', '.join(MODES)}, got {mode!r}"
        return lycoris_name_problem(lycoris_name) or strength_problem(strength) or bad_mode or True

    @classmethod
    def fingerprint_inputs(cls, lycoris_name, **kwargs):
        try:
            return file_signature(resolve_lycoris_path(lycoris_name))
        except Exception:  # noqa: BLE001 - validation reports the real error
            return float("nan")

    @classmethod
    def execute(cls, model, lycoris_name, strength, mode, dylora_rank=0) -> io.NodeOutput:
        patched, report = apply_lycoris(model, resolve_lycoris_path(lycoris_name), strength, mode,
                                        rank_cap=int(dylora_rank) or None)
        return io.NodeOutput(patched, ui=ui.PreviewText(report.text()))
