"""Padded batches give exactly the one-row-at-a-time answers, for both scorings."""

import pytest

from defer_core import DeferEditor
from defer_core.evaluation import Scorer, build_probes

from .conftest import tiny_hparams


@pytest.mark.parametrize("scoring", ["tf", "gen"])
def test_batched_equals_one_at_a_time_with_a_trained_adaptor(tiny, zsre_records, scoring):
    editor = DeferEditor(tiny, tiny_hparams(layer=2, n_iter=10, edit_lr=5e-2), seed=7)
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
    with editor.adaptor.bypassed():
        unedited = Scorer(tiny, batch_size=1).predict(editor.adaptor, scoring, rows)
    assert batched != unedited, "the adaptor must change some answers, or the comparison proves nothing"
