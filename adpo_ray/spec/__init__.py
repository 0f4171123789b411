"""Experiment specs: the pydantic models behind every YAML in ``tune_configs/``, and each trial's
effective settings (:class:`TrialKnobs`, from :meth:`ExperimentSpec.knobs`).

One spec describes one grid: environments x scenarios x methods (ADPO anchor modes and baselines)
x hidden sizes x seeds, with the budget, the shared optimisation knobs (``train:``), ADPO's loss
knobs (``adpo:``), PPO's overrides (``ppo:``), resources and tracking. Unknown keys are rejected;
every error names its field path and what is allowed; nothing starts before the whole file
validates (:func:`load_spec`).

One concern per module: :mod:`~adpo_ray.spec.sections` (each section's schema and
:data:`KIND_DEFAULTS`), :mod:`~adpo_ray.spec.experiment` (the whole spec and its checks),
:mod:`~adpo_ray.spec.trials` (trial coordinates and enumeration), :mod:`~adpo_ray.spec.knobs`
(:class:`TrialKnobs`), :mod:`~adpo_ray.spec.identity` (the MLflow identity of stored policies and
datasets), :mod:`~adpo_ray.spec.packs` (which trials share a trial pack),
:mod:`~adpo_ray.spec.devices` (the GPU rule) and :mod:`~adpo_ray.spec.loading`
(YAML in, errors out).
"""

from adpo_ray.spec.experiment import MAX_TRIALS, ExperimentSpec
from adpo_ray.spec.identity import (
    CleanPPO,
    clean_ppo,
    dataset_key,
    init_slot,
    pretrained_of,
    pretrained_policies,
    teacher_key,
    teacher_of,
)
from adpo_ray.spec.knobs import TrialKnobs
from adpo_ray.spec.loading import SpecDeprecationWarning, SpecError, load_spec, parse_spec
from adpo_ray.spec.sections import (
    KIND_DEFAULTS,
    POLICIES_EXPERIMENT,
    ADPOParams,
    ADPOSection,
    Algorithm,
    AnchorInit,
    Anchors,
    BanditParams,
    Budget,
    DatasetParams,
    DistillParams,
    EnvName,
    EnvOverride,
    Evaluation,
    PretrainParams,
    Resources,
    TeacherParams,
    Tracking,
    TrainParams,
    TrainSection,
)
from adpo_ray.spec.trials import (
    MAX_DIRNAME_BYTES,
    TrialSpec,
    check_identities,
    method_name,
    pack_dirname,
    trials_of,
    unit_name,
)

__all__ = ["ExperimentSpec", "TrialSpec", "TrialKnobs", "SpecError", "SpecDeprecationWarning", "load_spec",
           "parse_spec", "teacher_key", "dataset_key", "CleanPPO", "clean_ppo", "teacher_of", "pretrained_of",
           "pretrained_policies", "init_slot", "KIND_DEFAULTS", "POLICIES_EXPERIMENT", "TrainParams",
           "ADPOParams", "TrainSection", "ADPOSection", "check_identities", "method_name", "MAX_TRIALS",
           "MAX_DIRNAME_BYTES", "EnvName", "Algorithm", "PretrainParams", "AnchorInit", "Anchors", "Budget",
           "BanditParams", "Resources", "Tracking", "Evaluation", "TeacherParams", "DatasetParams",
           "DistillParams", "EnvOverride", "pack_dirname", "trials_of", "unit_name"]
