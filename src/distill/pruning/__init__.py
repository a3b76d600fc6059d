"""Structured pruning of Llama-family causal LMs by activation importance (Minitron)."""

from distill.pruning.importance import Importance, compute_importance
from distill.pruning.prune import prune
from distill.pruning.shape import SUPPORTED, LlmShape, check_supported

__all__ = ["SUPPORTED", "Importance", "LlmShape", "check_supported", "compute_importance", "prune"]
