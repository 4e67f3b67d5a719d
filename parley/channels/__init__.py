"""The channels Parley speaks: the neutral contract (``base``), one folder per provider, and the
``catalog`` that names them. Product code only; loopback fakes live in ``devkit.fakes``."""
