"""Hyperparameter importance for the report: Optuna's evaluators (fANOVA and PED-ANOVA) on the
sweep's study, or notes saying why a value is missing (too few trials, no variation, an
evaluator that needs more trials or a missing package), and for every evaluator shown over a
small sample, the caveat that its ranking is a hint.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..sinks.layout import SweepState
from ..spec import Objective

# Fewer completed trials than this and importance is noise: the page says so instead.
MIN_IMPORTANCE_TRIALS = 4
# PED-ANOVA is stable with >= 5 trials in its top quantile (Optuna's documentation).
PED_ANOVA_TOP_TRIALS = 5
PED_ANOVA_MIN_TRIALS = 2 * PED_ANOVA_TOP_TRIALS
# Below this many completed trials any evaluator's ranking is a hint, not a finding (fANOVA's
# random forest fits few points; one trial more or less can reorder the parameters): one
# threshold for every method, PED-ANOVA's own. Below it PED-ANOVA is skipped with a note and
# every evaluator shown gets the caveat.
SMALL_SAMPLE_TRIALS = PED_ANOVA_MIN_TRIALS

MakeEvaluator = Callable[[], optuna.importance.BaseImportanceEvaluator]


@dataclass
class Importance:
    """values[objective][evaluator][param], normalised to sum 1; notes explain what is missing."""

    values: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_complete: int = 0
    caveats: dict[str, str] = field(default_factory=dict)  # evaluator → its small-sample caveat, for the plot's legend


def load_study(state: SweepState) -> optuna.Study | None:
    """The study sweep.json names, or None when its storage no longer holds it."""
    try:
        return optuna.load_study(study_name=state.optuna_study_name, storage=state.optuna_storage)
    except KeyError:
        return None


def param_importances(study: optuna.Study | None, objectives: Sequence[Objective], params: Sequence[str]) -> Importance:
    """Optuna's importance evaluators per objective, over the study's COMPLETE trials (pruned
    trials stopped before T and carry no objective value at T)."""
    result = Importance()
    if study is None:
        result.notes.append("Hyperparameter importance not computed: the Optuna study named in sweep.json was not found.")
        return result
    if not params:
        result.notes.append("Hyperparameter importance not computed: the spec searches no hyperparameter.")
        return result
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    result.n_complete = len(complete)
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        result.notes.append(
            f"Too few trials for hyperparameter importance: the study has {len(complete)} completed trial(s); "
            f"at least {MIN_IMPORTANCE_TRIALS} are needed (pruned and failed trials have no value at T). Run more trials."
        )
        return result
    evaluators = _evaluators(len(complete), result.notes)
    for index, objective in enumerate(objectives):
        if not _varies(complete, index, objective, result.notes):
            continue
        for name, make in evaluators.items():
            importances = _evaluate(study, make(), params, index, objective, name, result.notes)
            if importances is not None:
                result.values.setdefault(objective.metric, {})[name] = importances
    _small_sample_caveats(result)
    return result


def _small_sample_caveats(result: Importance) -> None:
    """A caveat (a note, and a legend tag) for each evaluator shown over fewer than
    SMALL_SAMPLE_TRIALS completed trials."""
    if result.n_complete >= SMALL_SAMPLE_TRIALS:
        return
    shown = dict.fromkeys(name for by_evaluator in result.values.values() for name in by_evaluator)
    for name in shown:
        result.caveats[name] = f"{result.n_complete} trials: small sample"
        result.notes.append(
            f"{name} is computed over only {result.n_complete} completed trial(s), fewer than {SMALL_SAMPLE_TRIALS}: "
            "a small sample, so read its ranking as a hint (one trial more or less can reorder the parameters)."
        )


def _evaluators(n_complete: int, notes: list[str]) -> dict[str, MakeEvaluator]:
    """The evaluators that can run on this many trials; a note for each one that cannot."""
    evaluators: dict[str, MakeEvaluator] = {}
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)

        evaluators["fANOVA"] = lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        notes.append("fANOVA skipped: it needs scikit-learn, which is not installed.")
    if n_complete >= PED_ANOVA_MIN_TRIALS:
        quantile = min(0.5, max(0.1, PED_ANOVA_TOP_TRIALS / n_complete))
        evaluators["PED-ANOVA"] = lambda: optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
    else:
        notes.append(
            f"PED-ANOVA skipped: it compares the top quantile of trials with the rest and needs at least "
            f"{PED_ANOVA_MIN_TRIALS} completed trials ({PED_ANOVA_TOP_TRIALS} in its top quantile); this study has {n_complete}."
        )
    return evaluators


def _varies(complete: Sequence[FrozenTrial], index: int, objective: Objective, notes: list[str]) -> bool:
    """An objective every trial scored the same has nothing to attribute to a parameter."""
    values = [t.values[index] for t in complete if t.values is not None and len(t.values) > index]
    if len(set(values)) >= 2:
        return True
    notes.append(f"No importance for {objective.metric}: every completed trial has the same value ({values[0] if values else 'none'}).")
    return False


def _evaluate(study: optuna.Study, evaluator: optuna.importance.BaseImportanceEvaluator, params: Sequence[str], index: int, objective: Objective, name: str, notes: list[str]) -> dict[str, float] | None:
    """One evaluator on one objective, normalised to sum 1; None (and a note) when it fails or
    separates nothing."""
    # PED-ANOVA ranks "lower is better": negate a maximised objective. fANOVA (variance) ignores the sign.
    sign = -1.0 if objective.direction == "maximize" else 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = optuna.importance.get_param_importances(study, evaluator=evaluator, params=list(params), target=lambda t: sign * t.values[index], normalize=False)
        except (ValueError, RuntimeError) as error:
            notes.append(f"{name} for {objective.metric} failed: {error}")
            return None
    for warning in caught:
        text = str(warning.message)
        if issubclass(warning.category, optuna.exceptions.ExperimentalWarning) or "low `target` values" in text:
            continue  # the negation above is exactly what that warning asks for
        notes.append(f"{name} for {objective.metric}: {text}")
    total = sum(v for v in raw.values() if math.isfinite(v))
    if not total > 0:
        notes.append(f"{name} for {objective.metric}: every parameter scored 0 (the completed trials do not separate them).")
        return None
    return {param: (value / total if math.isfinite(value) else 0.0) for param, value in raw.items()}
