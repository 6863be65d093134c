# SPDX-License-Identifier: GPL-3.0-or-later
"""Read `validation_lycoris_strength` from a SimpleTuner config.json (a path or its JSON text)."""
from __future__ import annotations

import json
import math
import os

from ..lycoris_core.errors import LycorisError

KEY = "validation_lycoris_strength"


def _config_text(value: str) -> tuple[str, str]:
    text = value.strip()
    if text.startswith("{"):
        return text, "the JSON text given"
    path = os.path.expanduser(text)
    if not os.path.isfile(path) or not path.endswith(".json"):
        raise LycorisError(f"simpletuner_config: {text!r} is neither JSON text nor an existing .json file; paste "
                           "the content of SimpleTuner's config.json or give its path.")
    if os.path.getsize(path) > 4 * 2**20:
        raise LycorisError(f"simpletuner_config: {path} is larger than 4 MiB; it is not a SimpleTuner config.json.")
    with open(path, encoding="utf-8") as f:
        return f.read(), path


def strength_from_simpletuner_config(value: str) -> tuple[float, str]:
    """(multiplier, explanation) as SimpleTuner's validation uses it: missing or 0 means 1.0."""
    text, source = _config_text(value)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise LycorisError(f"simpletuner_config ({source}) is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise LycorisError(f"simpletuner_config ({source}) is not a JSON object.")
    raw = config.get(KEY, config.get(f"--{KEY}"))
    try:
        value = float(raw) if raw not in (None, "") else None
    except (TypeError, ValueError) as e:
        raise LycorisError(f"simpletuner_config ({source}): {KEY} = {raw!r} is not a number.") from e
    if value is not None and not math.isfinite(value):
        raise LycorisError(f"simpletuner_config ({source}): {KEY} = {raw!r} is not finite.")
    if not value:
        # SimpleTuner renders with float(validation_lycoris_strength or 1.0): a missing or zero strength is 1.0.
        return 1.0, f"{KEY} {'is 0' if value == 0 else 'is not set'} in {source}; SimpleTuner then uses 1.0"
    return value, f"{KEY} = {value:g} from {source}"
