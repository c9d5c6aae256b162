"""What the searcher tells Optuna besides a trial's values: constraint values and user attrs,
and in curve mode a training's other curve points as COMPLETE trials of their own.

Constraints (spec `constraints`): every trial told COMPLETE or PRUNED, and every added curve
point, carries its constraint values (results/ranking.py `violations`, <= 0 satisfied) through
Optuna 5's public `Trial.set_constraint` / `create_trial(constraints=...)`, which TPE and
NSGA-II read (trial.constraints) to rank feasible trials first; and a user attr `feasible`.
Optuna 5 deprecates the samplers' `constraints_func` for this (it would store every value a
second time), so study.sampler_settings passes none.

Curve mode (`search_space.threshold: curve`): Optuna samples layer, edit_lr and n_iter only.
A training that reaches T is told COMPLETE with its best point's values (user attrs threshold,
feasible, curve_training=True), and every other point of its final curve is added as a
COMPLETE trial of its own: the training's params plus `threshold`, its values, intermediate
values and constraint values (user attrs tune_trial_id, source_trial, curve_training=False).
With NSGA-II an added point joins its training's generation, so it can be a parent.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from ..protocol import FEASIBLE, INTERMEDIATE_KEY, POINTS_KEY, THRESHOLD
from ..spec import SweepSpec
from ..results.ranking import Bound, is_feasible, violations

TUNE_TRIAL_ATTR = "tune_trial_id"  # the Tune trial behind an Optuna trial (for an added curve point: its training's)
SOURCE_TRIAL_ATTR = "source_trial"  # an added curve point's: the Optuna trial number of its training
CURVE_TRAINING_ATTR = "curve_training"  # curve mode: True on a training's own trial, False on an added point
THRESHOLD_DISTRIBUTION = optuna.distributions.FloatDistribution(0.0, 1.0)  # an added curve point's threshold
ValuesOf = Callable[[Mapping[str, Any]], "list[float] | None"]  # a row's objective values, None if one is missing


def constraint_values(row: Mapping[str, Any], constraints: Sequence[Bound]) -> dict[str, float]:
    """Optuna's constraint values of a row, named like `loc_tf>=0.9` (<= 0: satisfied)."""
    names = [name for b in constraints for name in ((f"{b.metric}>={b.min:g}",) if b.min is not None else ()) + ((f"{b.metric}<={b.max:g}",) if b.max is not None else ())]
    return dict(zip(names, violations(row, constraints)))


def describe(ot_trial: optuna.trial.Trial, spec: SweepSpec, result: Mapping[str, Any]) -> None:
    """Before a COMPLETE or PRUNED tell: constraint values and feasibility of the values
    told (a pruned trial's: its last milestone's); in curve mode its point's threshold."""
    for name, value in constraint_values(result, spec.constraints).items():
        ot_trial.set_constraint(name, value)
    ot_trial.set_user_attr(FEASIBLE, is_feasible(result, spec.constraints))
    if spec.curve_mode:
        ot_trial.set_user_attr(CURVE_TRAINING_ATTR, True)
        if result.get(THRESHOLD) is not None:
            ot_trial.set_user_attr(THRESHOLD, float(result[THRESHOLD]))


def ga_generation_attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    """The system attr that puts an added curve point in the generation of its training.

    Optuna's GA samplers (NSGA-II) draw parents only from COMPLETE trials that carry their
    generation in a system attr (BaseGASampler.get_population / select_parent); a trial added
    with `study.add_trial` carries none and would never breed. The generation is read with the
    public `get_trial_generation` (which sets it on the still-running training if sampling did
    not); the attr's key is Optuna's private `_get_generation_key()`, the one private name used
    here: tests/test_curve_search.py fails loudly if an Optuna release renames it. {} for
    samplers without generations (TPE)."""
    sampler = study.sampler
    if not isinstance(sampler, optuna.samplers.BaseGASampler):
        return {}
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return {type(sampler)._get_generation_key(): sampler.get_trial_generation(study, frozen)}


def curve_trials(
    study: optuna.Study, spec: SweepSpec, ot_trial: optuna.trial.Trial, trial_id: str, result: Mapping[str, Any], values_of: ValuesOf
) -> list[optuna.trial.FrozenTrial]:
    """Curve mode: each point of a complete training's final curve but the best one (the
    training's own trial) as a COMPLETE trial to add. A point lacking an objective or a
    constrained metric (a tf breakpoint, where only the grid has generation metrics) is
    left out: Optuna gets no value or feasibility it cannot know."""
    if not spec.curve_mode:
        return []
    chosen = result.get(THRESHOLD)
    generation = ga_generation_attrs(study, ot_trial.number)
    trials = []
    constrained = {bound.metric for bound in spec.constraints}
    for point in result.get(POINTS_KEY) or []:
        values = values_of(point)
        if values is None or point[THRESHOLD] == chosen or any(point.get(metric) is None for metric in constrained):
            continue
        intermediate = point.get(INTERMEDIATE_KEY) if not spec.multi_objective else None
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=values,
                params={**ot_trial.params, THRESHOLD: float(point[THRESHOLD])},
                distributions={**ot_trial.distributions, THRESHOLD: THRESHOLD_DISTRIBUTION},
                user_attrs={
                    TUNE_TRIAL_ATTR: trial_id, SOURCE_TRIAL_ATTR: ot_trial.number, THRESHOLD: float(point[THRESHOLD]),
                    FEASIBLE: is_feasible(point, spec.constraints), CURVE_TRAINING_ATTR: False,
                },
                system_attrs=dict(generation),
                intermediate_values={int(n): float(v) for n, v in (intermediate or {}).items()},
                constraints=constraint_values(point, spec.constraints) or None,
            )
        )
    return trials
