# SPDX-License-Identifier: GPL-3.0-or-later
"""Pure-torch core: LyCORIS file parsing, per-algorithm maths and the T-LoRA schedule.

Imports neither ComfyUI nor node code (a test checks this), so it can be tested and benchmarked alone.

- `safetensors_file`: `read_lycoris_file`, `read_metadata_only` (validated header, no pickles);
- `adapters.registry`: `parse_modules`, `detect_algorithm`; `adapters.<algo>`: one `Adapter` subclass each;
- `tlora_schedule`: `active_rank`, `fill_mask_`, `tlora_params_from_config`;
- `layer.LayerSpec`, `errors`.
"""
