"""Competition kit for Kaggle's Sartorius Cell Instance Segmentation.

Modules: ``rle`` (mask formats), ``metric`` (the competition score), ``data`` (datasets),
``synth`` (synthetic data), ``submission``, ``cv`` (scoring CLI), ``bench`` (benchmarks),
``models`` (baseline and trained models).
"""
__version__ = "0.1.0"

CELL_TYPES = ("shsy5y", "astro", "cort")
IMAGE_SHAPE = (520, 704)  # (height, width) of every competition image


def check_cell_type(cell_type) -> str:
    """``cell_type`` if it is one of :data:`CELL_TYPES`, else a ValueError naming the valid ones."""
    if cell_type not in CELL_TYPES:
        raise ValueError(f"unknown cell_type {cell_type!r}; valid types are {list(CELL_TYPES)}")
    return cell_type


def package_versions(names=("numpy", "torch", "cellpose")) -> dict:
    """``{"kit": version, name: installed version or None}``, for run records and reports."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"kit": __version__}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
