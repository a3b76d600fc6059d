"""Signal sources a student learns from. Today: a live module; later: cached logits, LLM servers."""

from distill.teachers.live import LiveTeacher, call_model

__all__ = ["LiveTeacher", "call_model"]
