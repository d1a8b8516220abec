"""A model family in a folder of its own, with the shape of the built-in ones (``aaclip/train/families/
<family>/``): importing this package registers the family ``toy`` (``family.py``), and nothing else in
aaclip-edge names it. ``tests/test_toy_family.py`` takes it from training to the camera loop.

The toy scores each patch of the frozen CLIP's image tower as ``head(token) + <token, t>``: ``head`` is one
trainable linear layer, ``t`` the per-class constant (the normalized CLIP text embedding of
"a photo of a {object}."). Its backbone runs QuickGELU with a bilinear position-embedding resize, unlike
AA-CLIP's defaults.
"""
from toy_family.family import FAMILY  # noqa: F401 - registers "toy"
