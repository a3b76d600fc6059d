"""Dataset distillation: the synthetic set, the expert buffer, trajectory matching, DSA, ZCA, coreset
baselines and the evaluation protocol (Matching Training Trajectories)."""

from distill.dd.augment import DSAConfig, dsa
from distill.dd.buffer import Trajectory, check_span, load_buffer, save_epoch
from distill.dd.coreset import class_indices, herding, herding_select, random_real
from distill.dd.matching import StudentNet, StudentSteps, TrajectoryMatcher, schedule, unroll
from distill.dd.protocol import Classifier, evaluate_set, train_and_test
from distill.dd.synthetic import SyntheticSet
from distill.dd.zca import ZCA

__all__ = [
    "ZCA",
    "Classifier",
    "DSAConfig",
    "StudentNet",
    "StudentSteps",
    "SyntheticSet",
    "Trajectory",
    "TrajectoryMatcher",
    "check_span",
    "class_indices",
    "dsa",
    "evaluate_set",
    "herding",
    "herding_select",
    "load_buffer",
    "random_real",
    "save_epoch",
    "schedule",
    "train_and_test",
    "unroll",
]
