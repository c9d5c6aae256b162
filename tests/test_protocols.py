"""The `immediate` protocol (EasyEdit's sequential_edit=True from commit 3c21b20): each record
scored right after its own edit; stream and immediate from one edit stream; per-record scores
behind every milestone. Tiny real model, real ZsRE records."""

from statistics import fmean

import pytest

from defer_core import DeferEditor, DeferInputError, TrialPlan, run_trial, run_trials, tiny_llama
from defer_core.evaluation import Scorer, build_probes
from defer_core.results import SCORINGS, metric_key
from defer_core.scoring import token_accuracy

from .conftest import tiny_hparams

MILESTONES = (1, 3, 5)
HPARAMS = tiny_hparams(edit_lr=5e-2, n_iter=6, threshold=0.3)  # gates open on some probes only


def _edit_then_score_each(records, hparams, seed):
    """The reference: a plain loop that edits a record and scores that record at once, under
    every scoring, each prediction made on its own (no shared generation or batching)."""
    loaded = tiny_llama(seed=0)
    scorer = Scorer(loaded, batch_size=1)
    probes = [build_probes(loaded, r) for r in records]
    editor = DeferEditor(loaded, hparams, seed=seed)
    with editor.adaptor.bypassed():
        before = {s: [scorer.predict(editor.adaptor, s, [p.probe(s, "loc")])[0] for p in probes] for s in SCORINGS}
    per_record = []
    for index, probe in enumerate(probes):
        editor.edit(probe.edit)
        scores = {}
        for scoring in SCORINGS:
            for kind in ("rel", "gen"):
                (predicted,) = scorer.predict(editor.adaptor, scoring, [probe.probe(scoring, kind)])
                scores[metric_key(kind, scoring)] = token_accuracy(predicted, probe.probe(scoring, kind).target_ids)
            (predicted,) = scorer.predict(editor.adaptor, scoring, [probe.probe(scoring, "loc")])
            scores[metric_key("loc", scoring)] = token_accuracy(predicted, before[scoring][index])
        per_record.append(scores)
    editor.detach()
    return per_record


def test_immediate_equals_editing_then_scoring_each_record_one_at_a_time(zsre_records):
    records = zsre_records[:5]
    reference = _edit_then_score_each(records, HPARAMS, seed=3)
    result = run_trial(tiny_llama(seed=0), records, HPARAMS, TrialPlan(protocol="immediate", milestones=MILESTONES, scorings=SCORINGS), seed=3)
    assert [m.protocol for m in result.milestones] == ["immediate"] * 3
    for milestone in result.milestones:
        expected = {key: fmean(scores[key] for scores in reference[: milestone.n_edits]) for key in reference[0]}
        assert milestone.metrics == expected
        assert [r.record_id for r in milestone.records] == [r.record_id for r in records[: milestone.n_edits]]
        assert [r.metrics for r in milestone.records] == reference[: milestone.n_edits]
    assert [e.success for e in result.edits] == [s["rel_tf"] for s in reference], "success is the record's tf Rel right after its edit"
    stream = run_trial(tiny_llama(seed=0), records, HPARAMS, TrialPlan(milestones=MILESTONES, scorings=SCORINGS), seed=3)
    assert stream.milestones[-1].metrics != result.milestones[-1].metrics, "on this stream the two protocols must differ"


@pytest.mark.parametrize("scorings", [SCORINGS, ("gen",)])
def test_stream_and_immediate_sharing_one_edit_stream_equal_separate_runs(zsre_records, scorings):
    records = zsre_records[:5]
    both = run_trial(tiny_llama(seed=0), records, HPARAMS, TrialPlan(protocol=("stream", "immediate"), milestones=MILESTONES, scorings=scorings), seed=1)
    for protocol in ("stream", "immediate"):
        alone = run_trial(tiny_llama(seed=0), records, HPARAMS, TrialPlan(protocol=protocol, milestones=MILESTONES, scorings=scorings), seed=1)
        shared = both.milestones_of(protocol)
        assert [m.n_edits for m in shared] == list(MILESTONES)
        assert [m.metrics for m in shared] == [m.metrics for m in alone.milestones]
        assert [m.records for m in shared] == [m.records for m in alone.milestones]
        same = [(e.index, e.record_id, e.final_loss, e.success) for e in alone.edits]
        assert [(e.index, e.record_id, e.final_loss, e.success) for e in both.edits] == same, "one edit per record, the same edits"


def test_packed_immediate_equals_each_member_alone(zsre_records):
    records = zsre_records[:4]
    members = [tiny_hparams(edit_lr=5e-2, n_iter=6, threshold=0.3), tiny_hparams(edit_lr=2e-2, n_iter=4, threshold=0.25)]
    plan = TrialPlan(protocol=("stream", "immediate"), milestones=(2, 4), scorings=("tf", "genctx"))
    packed = run_trials(tiny_llama(seed=0), records, members, plan, seeds=[5, 6])
    for hparams, seed, together in zip(members, [5, 6], packed):
        alone = run_trial(tiny_llama(seed=0), records, hparams, plan, seed=seed)
        assert [(m.protocol, m.n_edits, m.metrics) for m in together.milestones] == [(m.protocol, m.n_edits, m.metrics) for m in alone.milestones]
    assert packed[0].milestones_of("immediate")[-1].metrics != packed[1].milestones_of("immediate")[-1].metrics


def test_every_milestone_is_the_mean_of_its_records(zsre_records):
    """Chunks too: the mean over chunks of equal size is the mean over their records."""
    records = zsre_records[:4]
    result = run_trial(tiny_llama(seed=0), records, HPARAMS, TrialPlan(protocol="chunks", milestones=(1, 2, 4), scorings=("tf", "gen")), seed=2)
    for milestone in result.milestones:
        assert len(milestone.records) == 4
        assert [r.chunk for r in milestone.records] == [i // milestone.n_edits for i in range(4)]
        for key, value in milestone.metrics.items():
            assert value == pytest.approx(fmean(r.metrics[key] for r in milestone.records), abs=1e-12)


def test_plans_combine_only_protocols_that_share_a_stream():
    assert TrialPlan(protocol=("stream", "immediate")).protocols == ("stream", "immediate")
    assert TrialPlan(protocol="immediate").protocols == ("immediate",)
    with pytest.raises(DeferInputError, match="share an edit stream"):
        TrialPlan(protocol=("stream", "chunks"))
    with pytest.raises(DeferInputError, match="protocol must be one of stream, chunks, immediate"):
        TrialPlan(protocol=("stream", "stream"))

