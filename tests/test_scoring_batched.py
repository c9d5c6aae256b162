"""Padded batches give exactly the one-row-at-a-time answers, for both scorings; generation
that caches the layers below the adaptor gives the answers of the reference loop that re-runs
every layer at every step."""

import pytest

from defer_core import DeferEditor
from defer_core.evaluation import Scorer, build_probes

from .conftest import tiny_hparams


@pytest.mark.parametrize("scoring,layer", [("tf", 2), ("gen", 0), ("gen", 2), ("gen", 3)])
def test_batched_equals_one_at_a_time_with_a_trained_adaptor(tiny, zsre_records, scoring, layer):
    editor = DeferEditor(tiny, tiny_hparams(layer=layer, n_iter=10, edit_lr=5e-2), seed=7)
    probes = [build_probes(tiny, r) for r in zsre_records]
    for probe in probes[:4]:
        editor.edit(probe.edit)
    editor.adaptor.threshold = 0.2  # the tiny model's gates sit near here: rows of a batch take both branches
    rows = [getattr(p, f"{scoring}_{kind}") for p in probes for kind in ("rel", "gen", "loc")]
    lengths = {len(getattr(r, "ids", getattr(r, "prompt_ids", ()))) for r in rows}
    assert len(lengths) > 3, "rows must differ in length so the batch is padded"
    batched = Scorer(tiny, batch_size=16).predict(editor.adaptor, scoring, rows)
    alone = [Scorer(tiny, batch_size=1).predict(editor.adaptor, scoring, [row])[0] for row in rows]
    assert batched == alone
    reference = [Scorer(tiny, batch_size=1, reuse_prefix=False).predict(editor.adaptor, scoring, [row])[0] for row in rows]
    assert batched == reference
    with editor.adaptor.bypassed():
        unedited = Scorer(tiny, batch_size=1).predict(editor.adaptor, scoring, rows)
    assert batched != unedited, "the adaptor must change some answers, or the comparison proves nothing"


def test_generation_stopping_at_eos_matches_generate_and_fills_short_windows(tiny):
    from defer_core.scoring import NOT_GENERATED, generation_predictions
    from defer_core.tokens import GenerationProbe

    prompt = tuple(tiny.tokenizer("Who wrote it?")["input_ids"])
    first = generation_predictions(tiny.model, None, [GenerationProbe(prompt, (5,))], 2, frozenset())[0][0]
    long_window = GenerationProbe(prompt, tuple(range(len(prompt) + 4)))
    short_window = GenerationProbe(prompt, (7, 8, 9, 10))
    got = generation_predictions(tiny.model, None, [long_window, short_window], 2, frozenset({first}))
    # the first generated token is EOS, so the row stops after one token, as generate() does
    assert got[1] == list(prompt[-3:]) + [first]
    assert got[0] == [NOT_GENERATED] * 3 + list(prompt) + [first]
    import torch

    reference = tiny.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=4, do_sample=False, use_cache=False,
                                    eos_token_id=first, pad_token_id=first)[0].tolist()
    assert reference[-4:] == got[1]


def test_generation_without_an_adaptor_caching_every_layer_equals_the_reference(tiny, zsre_records):
    from defer_core.evaluation import build_probes as probes_of

    rows = [probes_of(tiny, r).gen_loc for r in zsre_records] + [probes_of(tiny, r).gen_rel for r in zsre_records]
    cached = Scorer(tiny, batch_size=8).predict(None, "gen", rows)
    reference = [Scorer(tiny, batch_size=1, reuse_prefix=False).predict(None, "gen", [row])[0] for row in rows]
    assert cached == reference


@pytest.mark.parametrize("layer", [0, 3])
def test_both_scorings_sharing_the_prefix_equal_each_scoring_on_its_own(tiny, zsre_records, layer):
    """tf and gen of one prompt share the layers below the adaptor; the answers are those of the
    reference loops, also for a pair whose prompts differ (it is scored the separate way)."""
    from defer_core.prefix_generation import shares_prefix
    from defer_core.tokens import GenerationProbe

    editor = DeferEditor(tiny, tiny_hparams(layer=layer, n_iter=10, edit_lr=5e-2), seed=7)
    probes = [build_probes(tiny, r) for r in zsre_records]
    for probe in probes[:4]:
        editor.edit(probe.edit)
    editor.adaptor.threshold = 0.2
    tf_rows = [getattr(p, f"tf_{kind}") for p in probes for kind in ("rel", "gen", "loc")]
    gen_rows = [getattr(p, f"gen_{kind}") for p in probes for kind in ("rel", "gen", "loc")]
    gen_rows[0] = GenerationProbe(prompt_ids=gen_rows[1].prompt_ids, target_ids=gen_rows[0].target_ids)
    assert not shares_prefix(tf_rows[0], gen_rows[0]) and sum(shares_prefix(t, g) for t, g in zip(tf_rows, gen_rows)) > 20
    both = Scorer(tiny, batch_size=8).predict_scorings(editor.adaptor, {"tf": tf_rows, "gen": gen_rows})
    tf_both, gen_both = both["tf"], both["gen"]
    reference = Scorer(tiny, batch_size=1, reuse_prefix=False)
    assert tf_both == [reference.predict(editor.adaptor, "tf", [row])[0] for row in tf_rows]
    assert gen_both == [reference.predict(editor.adaptor, "gen", [row])[0] for row in gen_rows]
    with editor.adaptor.bypassed():
        assert gen_both != reference.predict(editor.adaptor, "gen", gen_rows), "the adaptor must change some answers"
