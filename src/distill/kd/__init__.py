"""Teacher -> student knowledge distillation: taps, the objective, the distiller, teachers, cohorts."""

from distill.kd.cohort import Cohort, Member
from distill.kd.distiller import Distiller, supervised
from distill.kd.objective import CE, Objective, Term, Terms, check_refs, check_terms, read_precomputed
from distill.kd.taps import Taps, find_module
from distill.kd.teachers import LiveTeacher, TeacherSignals, precompute_signals

__all__ = [
    "CE",
    "Cohort",
    "Distiller",
    "LiveTeacher",
    "Member",
    "Objective",
    "Taps",
    "TeacherSignals",
    "Term",
    "Terms",
    "check_refs",
    "check_terms",
    "find_module",
    "precompute_signals",
    "read_precomputed",
    "supervised",
]
