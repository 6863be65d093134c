# SPDX-License-Identifier: GPL-3.0-or-later
"""`LycorisInfo` ("LyCORIS Info"): what a LyCORIS file holds, as text."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..lycoris_comfy.info import describe_file
from ..lycoris_comfy.paths import lycoris_name_problem, lycoris_names, resolve_lycoris_path
from . import ids


class LycorisInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.LYCORIS_INFO,
            display_name="LyCORIS Info",
            category=ids.CATEGORY,
            description="Shows a LyCORIS file's algorithms, ranks, module count, likely base model, training "
                        "metadata and T-LoRA schedule.",
            inputs=[
                io.Combo.Input("lycoris_name", options=lycoris_names(),
                               tooltip="A LyCORIS .safetensors file from models/loras."),
            ],
            outputs=[io.String.Output(display_name="info", tooltip="The description, one fact per line.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, lycoris_name=None):
        # ComfyUI 0.3.75 does not check V3 combo values against their options.
        return lycoris_name_problem(lycoris_name) or True

    @classmethod
    def execute(cls, lycoris_name) -> io.NodeOutput:
        text = describe_file(resolve_lycoris_path(lycoris_name))
        return io.NodeOutput(text, ui=ui.PreviewText(text))
