# SPDX-License-Identifier: GPL-3.0-or-later
"""`LycorisStrength` ("LyCORIS Strength"): SimpleTuner's validation_lycoris_strength on a loaded model."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..lycoris_comfy.apply import strength_problem
from ..lycoris_comfy.simpletuner_config import strength_from_simpletuner_config
from ..lycoris_comfy.strength import set_strength
from . import ids


class LycorisStrength(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.LYCORIS_STRENGTH,
            display_name="LyCORIS Strength",
            category=ids.CATEGORY,
            description="Sets the LyCORIS multiplier of adapters loaded by 'Load LyCORIS' without reloading: "
                        "a scalar in bypass, ComfyUI patch strengths in merged form. Same maths as the "
                        "loader's strength, per algorithm.",
            inputs=[
                io.Model.Input("model", tooltip="A model from 'Load LyCORIS' (possibly stacked)."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="The LyCORIS multiplier (SimpleTuner's validation_lycoris_strength). "
                                       "Ignored when simpletuner_config is given."),
                io.String.Input("simpletuner_config", default="", multiline=False, optional=True,
                                tooltip="Optional: SimpleTuner config.json content or path; its "
                                        "validation_lycoris_strength is used (missing or 0 means 1.0, as in "
                                        "SimpleTuner)."),
                io.String.Input("lycoris_name", default="", optional=True,
                                tooltip="Optional: the file name of one loaded LyCORIS to change; empty = all."),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model at the new strength.")],
        )

    @classmethod
    def validate_inputs(cls, strength=None):
        # Named inputs skip ComfyUI's min/max check, and NaN passes it: strength_problem checks both.
        return strength_problem(strength) or True

    @classmethod
    def execute(cls, model, strength, simpletuner_config="", lycoris_name="") -> io.NodeOutput:
        note = f"strength {strength:g} (from the widget)"
        if simpletuner_config and simpletuner_config.strip():
            strength, note = strength_from_simpletuner_config(simpletuner_config)
        patched = set_strength(model, strength, lycoris_name.strip() or None)
        return io.NodeOutput(patched, ui=ui.PreviewText(f"LyCORIS strength {strength:g}: {note}"))
