"""distill: make small models (and small datasets) out of big ones by knowledge distillation."""

__version__ = "0.1.0"
