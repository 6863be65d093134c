# SPDX-License-Identifier: GPL-3.0-or-later
"""Pure-torch core: LyCORIS file parsing, per-algorithm maths and the T-LoRA schedule.

Imports neither ComfyUI nor node code (a test checks this), so it can be tested and benchmarked alone.
"""
