"""From a spec's search space to Optuna distributions (the searched parameters only; what a
trial's config means is spec/trial_config.py's)."""

from __future__ import annotations

import optuna

from ..spec import Choice, FloatRange, IntRange, Options, SweepSpec


def optuna_distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched parameters only; fixed ones are merged into the config by the trainable."""
    space: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, param in spec.search_space.searched().items():
        if isinstance(param, IntRange):
            space[name] = optuna.distributions.IntDistribution(param.low, param.high)
        elif isinstance(param, FloatRange):
            space[name] = optuna.distributions.FloatDistribution(param.low, param.high, log=param.log)
        elif isinstance(param, (Choice, Options)):
            space[name] = optuna.distributions.CategoricalDistribution(list(param.values))
    return space
