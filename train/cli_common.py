"""Options shared by the training-side commands (aaclip-train, aaclip-eval, aaclip-data)."""
from __future__ import annotations

from aaclip.contract.errors import UserError


def parse_object_names(values) -> dict[str, str]:
    """``--object-name CLASS=NAME`` (repeatable) -> {class: object name}."""
    out = {}
    for v in values:
        if "=" not in v:
            raise UserError(f"--object-name expects CLASS=NAME, got {v!r}")
        k, name = v.split("=", 1)
        out[k.strip()] = name.strip()
    return out
