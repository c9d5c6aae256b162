"""K trials in one forward pass give exactly what each trial gives alone."""

import pytest

from defer_core import DeferInputError, TrialPlan, run_trial, run_trials, tiny_llama

from .conftest import tiny_hparams


@pytest.mark.parametrize("protocol", ["stream", "chunks"])
def test_packed_trials_equal_each_trial_alone(zsre_records, protocol):
    members = [
        tiny_hparams(layer=2, edit_lr=5e-2, n_iter=6, threshold=0.2),
        tiny_hparams(layer=2, edit_lr=1e-3, n_iter=3, threshold=0.5),
        tiny_hparams(layer=2, edit_lr=2e-2, n_iter=9, threshold=0.25),
    ]
    seeds = [11, 12, 13]
    plan = TrialPlan(protocol=protocol, milestones=(2, 4))
    packed = run_trials(tiny_llama(seed=0), zsre_records[:4], members, plan, seeds=seeds)
    for hparams, seed, together in zip(members, seeds, packed):
        alone = run_trial(tiny_llama(seed=0), zsre_records[:4], hparams, plan, seed=seed)
        assert [e.final_loss for e in together.edits] == pytest.approx([e.final_loss for e in alone.edits], rel=1e-5, abs=1e-6)
        assert [e.success for e in together.edits] == [e.success for e in alone.edits]
        assert [m.metrics for m in together.milestones] == [m.metrics for m in alone.milestones]
    assert packed[0].milestones[-1].metrics != packed[1].milestones[-1].metrics, "members must really differ"


def test_packing_needs_one_module(tiny, zsre_records):
    with pytest.raises(DeferInputError, match="same module"):
        run_trials(tiny, zsre_records[:1], [tiny_hparams(layer=1), tiny_hparams(layer=2)], TrialPlan(), seeds=[0, 1])
