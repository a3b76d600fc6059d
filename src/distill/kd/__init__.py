"""Teacher -> student knowledge distillation: taps, the objective, the distiller, teachers, cohorts."""

from distill.kd.cohort import Cohort, Member
from distill.kd.distiller import Distiller
from distill.kd.objective import Objective, Term, Terms, check_refs, check_terms, read_cached
from distill.kd.taps import Taps, find_module
from distill.kd.teachers import LiveTeacher, precompute_signals

__all__ = [
    "Cohort",
    "Distiller",
    "LiveTeacher",
    "Member",
    "Objective",
    "Taps",
    "Term",
    "Terms",
    "check_refs",
    "check_terms",
    "find_module",
    "precompute_signals",
    "read_cached",
]
