"""The prompt ensemble of SPEC section 3: normal/abnormal states put into every template."""
from __future__ import annotations

from aaclip.train.common.constants import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES


def prompt_sentences(object_name: str) -> tuple[list[str], list[str]]:
    """(6 normal sentences, 10 abnormal sentences) for one object name."""
    normal = [t.format(s.format(object_name)) for s in NORMAL_STATES for t in TEMPLATES]
    abnormal = [t.format(s.format(object_name)) for s in ABNORMAL_STATES for t in TEMPLATES]
    return normal, abnormal
