"""darec: LLM-based sequential recommendation (DARec, arXiv:2408.07427) on PyTorch Lightning."""

__version__ = "0.1.0"
