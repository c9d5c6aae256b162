"""Optuna and Ray Tune: the search space, the searcher, the milestone scheduler, packs and ranking."""
