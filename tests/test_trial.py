"""Whole trials on the tiny model: stream and chunks protocols, milestones, per-edit outcomes."""

import pytest

from defer_core import DeferInputError, TrialPlan, run_trial, tiny_llama
from defer_core.evaluation import Scorer, UneditedLocality, build_probes

from .conftest import tiny_hparams


def test_stream_reports_every_milestone_and_every_edit(tiny, zsre_records):
    seen = []
    result = run_trial(tiny, zsre_records[:6], tiny_hparams(), TrialPlan(milestones=(1, 3, 6)), seed=1, on_milestone=seen.append)
    assert [m.n_edits for m in result.milestones] == [1, 3, 6] == [m.n_edits for m in seen]
    assert [e.index for e in result.edits] == [1, 2, 3, 4, 5, 6]
    assert [e.record_id for e in result.edits] == [r.record_id for r in zsre_records[:6]]
    for milestone in result.milestones:
        assert set(milestone.metrics) == {"rel_tf", "gen_tf", "loc_tf", "rel_gen", "gen_gen", "loc_gen"}
        assert all(0.0 <= value <= 1.0 for value in milestone.metrics.values())
    assert all(e.final_loss > 0 and e.seconds > 0 and 0 <= e.success <= 1 for e in result.edits)
    assert tiny.model.model.layers[2].mlp.down_proj.__class__.__name__ == "Linear", "the adaptor is detached after the trial"


def test_locality_compares_against_the_truly_unedited_model(zsre_records):
    loaded = tiny_llama(seed=0)
    unedited = UneditedLocality()
    plan = TrialPlan(milestones=(4,), scorings=("tf",))
    run_trial(loaded, zsre_records[:4], tiny_hparams(n_iter=20, edit_lr=5e-2), plan, unedited=unedited)
    fresh = tiny_llama(seed=0)
    expected = Scorer(fresh).predict(None, "tf", [build_probes(fresh, r).tf_loc for r in zsre_records[:4]])
    assert [unedited.predictions["tf"][r.record_id] for r in zsre_records[:4]] == expected


def test_chunks_protocol_rolls_back_between_chunks(tiny, zsre_records):
    result = run_trial(tiny, zsre_records[:6], tiny_hparams(), TrialPlan(protocol="chunks", milestones=(1, 2, 6), scorings=("tf",)))
    assert [m.n_edits for m in result.milestones] == [1, 2, 6]
    assert len(result.edits) == 6 + 6 + 6
    assert [e.chunk for e in result.edits[:6]] == [0, 1, 2, 3, 4, 5]
    assert [e.chunk for e in result.edits[6:12]] == [0, 0, 1, 1, 2, 2]
    # the single chunk of 6 is the stream over the same 6 records
    stream = run_trial(tiny, zsre_records[:6], tiny_hparams(), TrialPlan(milestones=(6,), scorings=("tf",)))
    assert result.milestones[-1].metrics == stream.milestones[-1].metrics


def test_fast_and_plain_trials_agree(zsre_records):
    plans = [TrialPlan(milestones=(2, 4), edit_path=path) for path in ("fast", "plain")]
    fast, plain = (run_trial(tiny_llama(seed=0), zsre_records[:4], tiny_hparams(layer=1), plan, seed=3) for plan in plans)
    assert [m.metrics for m in fast.milestones] == [m.metrics for m in plain.milestones]
    assert [e.final_loss for e in fast.edits] == pytest.approx([e.final_loss for e in plain.edits], rel=1e-4)


@pytest.mark.parametrize("plan_args, message", [
    ({"protocol": "batch"}, "protocol"), ({"milestones": (3, 1)}, "ascending"), ({"scorings": ("bleu",)}, "scorings"),
])
def test_bad_plans_are_rejected(plan_args, message):
    with pytest.raises(DeferInputError, match=message):
        TrialPlan(**plan_args)


def test_unedited_predictions_are_cached_on_disk_and_reused(tmp_path, zsre_records):
    from defer_core.evaluation import unedited_cache_file
    from defer_core.trial import unedited_locality_for

    loaded = tiny_llama(seed=0)
    plan = TrialPlan(milestones=(2,))
    hparams = tiny_hparams(threshold=0.99)  # the gate stays closed: Loc is 1 against true unedited predictions
    first = run_trial(loaded, zsre_records[:2], hparams, plan, cache_dir=tmp_path)
    assert first.milestones[0].metrics["loc_tf"] == 1.0
    (cache_file,) = tmp_path.glob("unedited-*.json")
    assert cache_file == unedited_cache_file(tmp_path, loaded, zsre_records[:2])
    stored = cache_file.read_text()
    # a new process sees the file: poison one prediction and check the trial uses the stored values
    import json

    poisoned = json.loads(stored)
    poisoned["tf"][zsre_records[0].record_id] = [-5] * len(poisoned["tf"][zsre_records[0].record_id])
    cache_file.write_text(json.dumps(poisoned))
    other = tiny_llama(seed=0)
    second = run_trial(other, zsre_records[:2], hparams, plan, cache_dir=tmp_path)
    assert second.milestones[0].metrics["loc_tf"] < first.milestones[0].metrics["loc_tf"]
    assert unedited_locality_for(other, zsre_records[:2], tmp_path).predictions["tf"][zsre_records[0].record_id][0] == -5
