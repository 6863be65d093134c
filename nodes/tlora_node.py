# SPDX-License-Identifier: GPL-3.0-or-later
"""`TLoraSamplerWrapper` ("T-LoRA Sampler Wrapper"): SimpleTuner's per-timestep rank mask, overridden or off."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..lycoris_comfy.apply import tlora_params_problem
from ..lycoris_comfy.tlora_config import configure_tlora, schedule_image
from . import ids


class TLoraSamplerWrapper(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.TLORA_SAMPLER_WRAPPER,
            display_name="T-LoRA Sampler Wrapper",
            category=ids.CATEGORY,
            description="Applies SimpleTuner's T-LoRA rank mask at every model call (r(t) = floor(((1000-t)/1000)"
                        "^alpha·(R-R_min)) + R_min, t = 1000·sigma for flow models, the discrete timestep for "
                        "SD/SDXL). 'Load LyCORIS' already installs the file's schedule; use this node to override "
                        "min_rank/alpha or to switch the mask off.",
            inputs=[
                io.Model.Input("model", tooltip="A model carrying a T-LoRA loaded by 'Load LyCORIS' (bypass)."),
                io.Int.Input("min_rank", default=-1, min=-1, max=4096,
                             tooltip="Ranks always active at the noisiest step (tlora_min_rank). -1: from the file "
                                     "(lycoris_config metadata or sidecar), else SimpleTuner's default 1."),
                io.Float.Input("tlora_alpha", default=0.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Exponent of the schedule (tlora_alpha). 0: from the file, else 1.0."),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off: all ranks at every step (what a merged T-LoRA renders)."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional: your sampler's SIGMAS (e.g. from BasicScheduler), for the "
                                        "'schedule' picture. Without it the picture uses 20 steps of 'simple'."),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model with the T-LoRA schedule set."),
                     io.Image.Output("schedule", display_name="schedule",
                                     tooltip="Active T-LoRA rank at each step (one panel per T-LoRA file).")],
        )

    @classmethod
    def validate_inputs(cls, min_rank=None, tlora_alpha=None):
        # Named inputs skip ComfyUI's min/max check, and NaN passes it: tlora_params_problem checks both.
        return tlora_params_problem(min_rank, tlora_alpha) or True

    @classmethod
    def execute(cls, model, min_rank, tlora_alpha, enabled, sigmas=None) -> io.NodeOutput:
        patched, text = configure_tlora(model, min_rank, tlora_alpha, enabled)
        image = schedule_image(patched, sigmas)
        return io.NodeOutput(patched, image, ui=ui.PreviewText(text))
