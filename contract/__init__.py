"""aaclip.contract: the bottom layer every other package builds on; torch-free.

Owns: the graph contract (tensor names, dtypes, layouts; ``tensors``; as an inference server serves it:
``served``), the manifest schema with its one strict loader and one atomic writer (``manifest``), the score
parameters and score arithmetic (``score``), the feed builder that turns frames into a runner's inputs
(``feeds``), user-facing errors (``errors``), the shared click options and logging set-up (``cli``), atomic
file helpers and image-file suffixes (``files``), reading image files (``images``), the evaluation metrics
(``metrics``).
May import: numpy, opencv, click and the standard library only; nothing else of aaclip. It must install and
import on a bare Jetson (``metrics`` imports scikit-learn and scipy inside the functions that use them).
"""
