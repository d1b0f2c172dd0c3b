"""Drivers that read the repository layout (run from the repository root): the demo
(``python -m tools.demo``) and the bundle builder (``tools.bundle``, behind ``build_bundle.py``).
Not part of the installed library."""
