"""Benchmarks of the kit against the peers they name (run from the repository root):
``python -m benchmarks.bench`` (metric, codec, kit.cv) and ``python -m benchmarks.postprocess``
(Mask R-CNN post-processing). Not part of the installed library."""
