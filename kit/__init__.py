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


def check_cell_type_counts(name: str, counts: dict) -> None:
    """A config map ``cell type -> count`` (e.g. ``train.repeat``, ``train.specialize``): every
    key one of :data:`CELL_TYPES`, every count >= 1, else a ValueError naming ``name``."""
    for cell_type, count in counts.items():
        if cell_type not in CELL_TYPES:
            raise ValueError(f"{name}: unknown cell type {cell_type!r} (known: {list(CELL_TYPES)})")
        if count < 1:
            raise ValueError(f"{name}.{cell_type} must be >= 1, got {count!r}")


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
