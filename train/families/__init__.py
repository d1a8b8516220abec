"""Model families: one registry keyed by ``method``, one module per family (``aaclip``: AA-CLIP).

    from aaclip.train.families import Family, register_family, get_family
    from aaclip.train.families.base import FamilyModel        # the model interface (torch)

See ``registry.Family`` for what a family supplies and docs/checkpoint-format.md ("Model families")
for how to add one.
"""
from aaclip.train.families.registry import DEFAULT_METHOD, Family, check_method, family_names, get_family, register_family, unregister_family

__all__ = ["DEFAULT_METHOD", "Family", "check_method", "family_names", "get_family", "register_family",
           "unregister_family"]
