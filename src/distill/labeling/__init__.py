"""LLM-labelled data: task files and prompts, strict label parsing, vote aggregation, lexicon baselines."""

from distill.labeling.aggregate import Vote, coverage_precision, scores, vote
from distill.labeling.task import Label, Task, load_task

__all__ = ["Label", "Task", "Vote", "coverage_precision", "load_task", "scores", "vote"]
