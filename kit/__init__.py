"""Competition kit for Kaggle's Sartorius Cell Instance Segmentation.

Modules: ``rle`` (mask formats), ``metric`` (the competition score), ``data`` (datasets),
``synth`` (synthetic data), ``submission``, ``cv`` (scoring CLI), ``bench`` (benchmarks),
``models`` (baseline and trained models).
"""
__version__ = "0.1.0"

CELL_TYPES = ("shsy5y", "astro", "cort")
IMAGE_SHAPE = (520, 704)  # (height, width) of every competition image
