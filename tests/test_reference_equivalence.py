"""The product's DEFER against a plain restatement of the reference: same initial heads give
the same loss at every step, the same heads after each edit, and the same predictions."""

import pytest
import torch

from defer_core import DeferEditor, tiny_llama
from defer_core.evaluation import Scorer, build_probes

from .conftest import tiny_hparams
from .reference_defer import attach_reference, reference_edit, reference_generation, reference_teacher_forced


def _copy_heads(source, target) -> None:
    with torch.no_grad():
        target.defer.weight.copy_(source.defer.weight)
        target.defer.bias.copy_(source.defer.bias)
        target.predict_values.weight.copy_(source.predict_values.weight)
        target.predict_values.bias.copy_(source.predict_values.bias)


@pytest.mark.parametrize("edit_path", ["plain", "fast"])
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_continual_edits_match_reference(zsre_records, edit_path, layer):
    hparams = tiny_hparams(layer=layer, n_iter=6, edit_lr=5e-2, threshold=0.5)
    ours, theirs = tiny_llama(seed=0), tiny_llama(seed=0)
    editor = DeferEditor(ours, hparams, seed=123, edit_path=edit_path)
    reference = attach_reference(theirs.model, layer, hparams.threshold)
    _copy_heads(editor.adaptor, reference)
    tokenizer = theirs.tokenizer

    for record in zsre_records[:3]:
        probes = build_probes(ours, record)
        stats = editor.edit(probes.edit)
        expected = reference_edit(theirs.model, reference, tokenizer, record.prompt, record.target, hparams.edit_lr, hparams.n_iter)
        assert stats.losses == pytest.approx(expected, rel=1e-4, abs=1e-5)
        for mine, ref in ((editor.adaptor.defer, reference.defer), (editor.adaptor.predict_values, reference.predict_values)):
            torch.testing.assert_close(mine.weight, ref.weight, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(mine.bias, ref.bias, rtol=1e-4, atol=1e-5)

    scorer = Scorer(ours, batch_size=4)
    probes = [build_probes(ours, r) for r in zsre_records[:6]]
    # A random tiny model learns small gates; put the threshold where some rows defer and some
    # do not, so the comparison below covers both branches of the hard switch.
    threshold = _median_gate(editor, [p.tf_rel.ids for p in probes])
    editor.adaptor.threshold = reference.threshold = threshold
    unedited = tiny_llama(seed=0)
    changed = 0
    for kind, prompt_of, target_of in (("rel", lambda r: r.prompt, lambda r: r.target), ("gen", lambda r: r.rephrase, lambda r: r.target),
                                        ("loc", lambda r: r.locality_prompt, lambda r: r.locality_answer)):
        tf_ours = scorer.predict(editor.adaptor, "tf", [getattr(p, f"tf_{kind}") for p in probes])
        gen_ours = scorer.predict(editor.adaptor, "gen", [getattr(p, f"gen_{kind}") for p in probes])
        for record, tf_row, gen_row in zip(zsre_records[:6], tf_ours, gen_ours):
            assert tf_row == reference_teacher_forced(theirs.model, tokenizer, prompt_of(record), target_of(record))[0]
            assert gen_row == reference_generation(theirs.model, tokenizer, prompt_of(record), target_of(record))[0]
            changed += tf_row != reference_teacher_forced(unedited.model, tokenizer, prompt_of(record), target_of(record))[0]
    assert 0 < changed < 18, "the edited model should differ from the unedited one on some probes, not all"


def _median_gate(editor, rows) -> float:
    """A threshold halfway between the two middle gate values of the given rows."""
    gates = []
    for ids in rows:
        with torch.no_grad():
            hidden = {}
            handle = editor.adaptor.register_forward_pre_hook(lambda m, a: hidden.update(q=a[0][:, -1]))
            editor.model(input_ids=torch.tensor([ids]))
            handle.remove()
            gates.append(float(torch.sigmoid(editor.adaptor.defer(hidden["q"]))))
    ordered = sorted(gates)
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2  # between two rows, never on one


def test_untrained_adaptor_is_transparent_and_detach_restores(tiny, zsre_records):
    probes = [build_probes(tiny, r) for r in zsre_records[:4]]
    scorer = Scorer(tiny)
    base_module = tiny.model.model.layers[1].mlp.down_proj
    baseline = scorer.predict(None, "tf", [p.tf_rel for p in probes])
    editor = DeferEditor(tiny, tiny_hparams(layer=1), seed=0)
    assert scorer.predict(editor.adaptor, "tf", [p.tf_rel for p in probes]) == baseline
    editor.edit(probes[0].edit)
    editor.reset()
    assert editor.adaptor.untrained
    assert scorer.predict(editor.adaptor, "tf", [p.tf_rel for p in probes]) == baseline
    editor.detach()
    assert tiny.model.model.layers[1].mlp.down_proj is base_module
    assert all(not p.requires_grad for p in tiny.model.parameters())
