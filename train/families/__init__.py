"""Model families: one registry keyed by ``method`` (``registry``), the model interface (``base``), and one
folder per family that ships with aaclip-edge, each registering itself when this package is imported:
``aa_clip`` (``aa-clip``), ``clip_ad`` (``clip-ad``, ``clip-ad-plus``), ``res2clip`` (``res2clip``,
``res2clip-ft``).

    from aaclip.train.families import Family, register_family, get_family
    from aaclip.train.families.base import FamilyModel        # the model interface (torch)

A family's folder holds ``family`` (its ``Family`` entry), ``config``, ``model``, and as it needs them
``trainer`` (steps plugged into ``aaclip.train.common.driver``), an importer of official checkpoints and
``flops``. See ``registry.Family`` for what a family supplies and docs/architecture.md ("Adding a method")
for how to add one.
"""
from aaclip.train.families.registry import (DEFAULT_METHOD, Family, check_method, family_names, get_family,
                                            register_family, unregister_family)

from aaclip.train.families.aa_clip import family as _aa_clip  # noqa: F401,E402 - registers aa-clip
from aaclip.train.families.clip_ad import family as _clip_ad  # noqa: F401,E402 - registers clip-ad, clip-ad-plus
from aaclip.train.families.res2clip import family as _res2clip  # noqa: F401,E402 - registers res2clip, res2clip-ft

__all__ = ["DEFAULT_METHOD", "Family", "check_method", "family_names", "get_family", "register_family",
           "unregister_family"]
