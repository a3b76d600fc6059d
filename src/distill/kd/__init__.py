"""Teacher -> student knowledge distillation: taps, the objective, the distiller, teachers, cohorts."""

from distill.kd.cohort import Cohort, Member
from distill.kd.distiller import Distiller
from distill.kd.objective import Objective, Term, check_refs, check_terms
from distill.kd.taps import Taps, find_module
from distill.kd.teachers import LiveTeacher

__all__ = [
    "Cohort",
    "Distiller",
    "LiveTeacher",
    "Member",
    "Objective",
    "Taps",
    "Term",
    "check_refs",
    "check_terms",
    "find_module",
]
