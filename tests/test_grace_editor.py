"""The product's GRACE against a plain restatement of EasyEdit's (tests/reference_grace.py), and
GRACE's hparams file in and out.

Equality is exact (torch.equal, ==): both sides run the same float32 operations in the same
order on one thread, with the same random stream (the product's own generator seeded with
`seed`, the reference's global one seeded with `torch.manual_seed(seed)`), so any difference is
a difference in behaviour, not rounding.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import pytest
import torch
import yaml

from defer_core import DeferInputError, tiny_llama
from defer_core.data import EditRecord
from defer_core.grace import GraceEditor, GraceLayer
from defer_core.grace_hparams import (
    EASYEDIT_KEYS,
    PRODUCT_ONLY_FIELDS,
    GraceHParams,
    dump_grace_hparams,
    load_grace_hparams,
    save_grace_hparams,
)
from defer_core.tokens import prompt_target

from .reference_grace import attach_reference, reference_edit

FIXTURES = Path(__file__).parent / "fixtures"
EASYEDIT_YAML = FIXTURES / "easyedit_grace_llama-7b.yaml"  # EasyEdit hparams/GRACE/llama-7b.yaml at 14cea82, unchanged
EASYEDIT_HPARAMS_SOURCE = FIXTURES / "easyedit_grace_hparams.py.txt"  # easyeditor/models/grace/grace_hparams.py at 14cea82, unchanged
LAYER = 2
SEED = 7


def grace_hparams(**changes) -> GraceHParams:
    base = GraceHParams(model_name="tiny-llama", inner_params=(f"model.layers[{LAYER}].mlp.down_proj.weight",), n_iter=5, device="cpu")
    return base.replace(**changes)


def teacher_forced_texts(records: list[EditRecord]) -> list[str]:
    return [text for r in records for text in (f"{r.prompt} {r.target}", f"{r.rephrase} {r.target}", f"{r.locality_prompt} {r.locality_answer}")]


@torch.no_grad()
def logits_of(model, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    """One forward per text, in order (each forward may draw from the random stream)."""
    return [model(**tokenizer(text, return_tensors="pt")).logits for text in texts]


def run_both(records: list[EditRecord], hparams: GraceHParams, edit_path: str = "plain"):
    """Edit `records` in order with the product and the reference from the same model and seed;
    return (product editor, reference layer, product losses, reference losses, reference model)."""
    ours, theirs = tiny_llama(seed=0), tiny_llama(seed=0)
    editor = GraceEditor(ours, hparams, seed=SEED, edit_path=edit_path)
    assert editor.edit_path == edit_path
    reference = attach_reference(
        theirs.model, LAYER, eps=hparams.eps, val_init=hparams.val_init, val_train=hparams.val_train,
        replacement=hparams.replacement, eps_expand=hparams.eps_expand,
    )
    our_losses = [editor.edit(prompt_target(ours.tokenizer, r.prompt, r.target)).losses for r in records]
    torch.manual_seed(SEED)
    their_losses = [reference_edit(theirs.model, reference, theirs.tokenizer, r.prompt, r.target, hparams.edit_lr, hparams.n_iter) for r in records]
    return editor, reference, our_losses, their_losses, theirs


def assert_same_codebook(layer: GraceLayer, reference) -> None:
    assert layer.num_keys == reference.keys.shape[0]
    assert torch.equal(layer.keys, reference.keys)
    assert torch.equal(layer.values.detach(), reference.values.detach())
    assert torch.equal(layer.epsilons, reference.epsilons.view(-1))
    assert len(layer.key_labels) == len(reference.key_labels)
    assert all(torch.equal(a, b) for a, b in zip(layer.key_labels, reference.key_labels))


def assert_stream_matches(records: list[EditRecord], hparams: GraceHParams, eval_records: list[EditRecord], edit_path: str = "plain") -> GraceEditor:
    editor, reference, our_losses, their_losses, theirs = run_both(records, hparams, edit_path)
    assert our_losses == their_losses
    assert_same_codebook(editor.layer, reference)
    texts = teacher_forced_texts(eval_records)
    ours = logits_of(editor.model, editor.loaded.tokenizer, texts)
    expected = logits_of(theirs.model, theirs.tokenizer, texts)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))
    assert editor.layer.key_id == reference.key_id
    return editor


def similar_record(record: EditRecord) -> EditRecord:
    """Same target, a prompt of the same length with one letter changed: the same labels'
    mean (so EasyEdit's label_match says equal) and a nearby but different key."""
    index = next(i for i, c in enumerate(record.prompt) if c.isalpha() and i > 5)
    letter = "x" if record.prompt[index] != "x" else "y"
    return dataclasses.replace(record, record_id=record.record_id + "-twin", prompt=record.prompt[:index] + letter + record.prompt[index + 1 :])


def codebook_events(caplog) -> set[str]:
    events = set()
    for message in caplog.messages:
        for event in ("new key", "splits radius", "radius expanded"):
            if event in message:
                events.add(event)
    return events


@pytest.mark.parametrize("edit_path", ["plain", "fast"])
@pytest.mark.parametrize(
    "changes, events",
    [
        ({}, {"splits radius"}),  # EasyEdit's llama-7b values: eps 1.0 covers every key of the tiny model, labels differ
        ({"val_init": "warm"}, {"splits radius"}),
        ({"eps": 0.01}, {"new key"}),
        ({"eps": 0.04}, {"new key", "splits radius"}),
        ({"eps": 0.04, "replacement": "replace_all"}, {"new key", "splits radius"}),
        ({"eps": 0.04, "replacement": "replace_prompt"}, {"new key", "splits radius"}),
        ({"eps": 0.04, "val_train": "adv"}, {"new key", "splits radius"}),
    ],
    ids=["easyedit-defaults", "warm", "all-new-keys", "mixed", "replace-all", "replace-prompt", "adv"],
)
def test_edit_stream_matches_reference(zsre_records, caplog, changes, events, edit_path):
    caplog.set_level(logging.DEBUG, logger="defer_core.grace")
    assert_stream_matches(zsre_records[:6], grace_hparams(**changes), zsre_records[:8], edit_path)
    assert events <= codebook_events(caplog)


@pytest.mark.parametrize("edit_path", ["plain", "fast"])
@pytest.mark.parametrize("eps_expand", ["coverage", "moving_average"])
def test_radius_expansion_matches_reference(zsre_records, caplog, eps_expand, edit_path):
    """A twin record has the same labels, so its key lands in the expansion branch when EasyEdit's
    label list lines up with the nearest key: at once after its original (one key), and for the
    middle one of three keys (labels are kept newest first)."""
    caplog.set_level(logging.DEBUG, logger="defer_core.grace")
    a, b, c = zsre_records[:3]
    records = [a, similar_record(a), b, c, similar_record(b)]
    editor = assert_stream_matches(records, grace_hparams(eps=0.02, eps_expand=eps_expand, val_init="warm"), records, edit_path)
    expanded = [m for m in caplog.messages if "radius expanded" in m]
    assert len(expanded) == 2 and expanded[0].startswith("GRACE: key 0 ") and expanded[1].startswith("GRACE: key 1 ")
    assert editor.layer.num_keys == 3


@pytest.mark.parametrize("order, event", [("prepend", "splits radius"), ("append", "radius expanded")])
def test_label_order_decides_between_split_and_expansion(zsre_records, caplog, order, event):
    """EasyEdit's newest-first label list compares a twin of the first record with the second
    record's label, so it splits where GRACE's own repo (labels in key order) expands."""
    caplog.set_level(logging.DEBUG, logger="defer_core.grace")
    loaded = tiny_llama(seed=0)
    editor = GraceEditor(loaded, grace_hparams(eps=0.02, key_label_order=order), seed=SEED)
    a, b = zsre_records[:2]
    for record in (a, b, similar_record(a)):
        editor.edit(prompt_target(loaded.tokenizer, record.prompt, record.target))
    assert event in caplog.messages[-1]


@pytest.mark.parametrize("layer", [0, 3])
@pytest.mark.parametrize("changes", [{"eps": 0.04}, {"val_init": "warm", "replacement": "replace_all"}, {"eps": 0.04, "replacement": "replace_prompt", "val_train": "adv"}])
def test_fast_path_equals_plain_path_on_other_layers(zsre_records, layer, changes):
    """The first and the last decoder layer: nothing below to skip, nothing above to run."""
    hparams = grace_hparams(**changes).replace(inner_params=(f"model.layers[{layer}].mlp.down_proj.weight",))
    runs = []
    for edit_path in ("plain", "fast"):
        loaded = tiny_llama(seed=0)
        editor = GraceEditor(loaded, hparams, seed=SEED, edit_path=edit_path)
        losses = [editor.edit(prompt_target(loaded.tokenizer, r.prompt, r.target)).losses for r in zsre_records[:5]]
        runs.append((losses, editor.layer.values.detach(), logits_of(editor.model, loaded.tokenizer, teacher_forced_texts(zsre_records[:5]))))
    (plain_losses, plain_values, plain_logits), (fast_losses, fast_values, fast_logits) = runs
    assert plain_losses == fast_losses
    assert torch.equal(plain_values, fast_values)
    assert all(torch.equal(a, b) for a, b in zip(plain_logits, fast_logits))


def test_key_labels_follow_easyedit_order(zsre_records):
    """EasyEdit's add_key puts the new label first while the key goes last: key_labels[0] is the
    newest edit's label, not the first key's."""
    editor, reference, *_ = run_both(zsre_records[:3], grace_hparams(eps=0.01))
    newest = prompt_target(editor.loaded.tokenizer, zsre_records[2].prompt, zsre_records[2].target)
    assert editor.layer.key_labels[0][0, newest.n_prompt :].tolist() == list(newest.target_ids)
    assert all(torch.equal(a, b) for a, b in zip(editor.layer.key_labels, reference.key_labels))


def test_generation_keys_on_the_prompt_like_easyedit(zsre_records):
    """EasyEdit scores GRACE by generate(use_cache=False) after GRACE.generate unsets key_id."""
    editor, reference, _, _, theirs = run_both(zsre_records[:4], grace_hparams(eps=0.04))
    for record in zsre_records[:4]:
        ours = editor.loaded.tokenizer(record.rephrase, return_tensors="pt")
        editor.prepare_generation()
        reference.key_id = -1
        kwargs = {"max_new_tokens": 4, "do_sample": False, "use_cache": False, "pad_token_id": 2}
        mine = editor.model.generate(**ours, **kwargs)
        expected = theirs.model.generate(**theirs.tokenizer(record.rephrase, return_tensors="pt"), **kwargs)
        assert torch.equal(mine, expected)
        assert editor.layer.key_id == reference.key_id == ours["input_ids"].shape[1] - 1  # sticky at the prompt's last token


def test_n_iter_one_updates_codebook_at_evaluation(zsre_records):
    """EasyEdit leaves `iter` at its last value: with n_iter 1 that is 0, so evaluation forwards
    run the codebook update too (with the last edit's labels)."""
    hparams = grace_hparams(n_iter=1, eps=0.01)
    editor, reference, our_losses, their_losses, theirs = run_both(zsre_records[:2], hparams)
    assert our_losses == their_losses
    keys_before = editor.layer.num_keys
    texts = teacher_forced_texts(zsre_records[2:4])
    ours = logits_of(editor.model, editor.loaded.tokenizer, texts)
    expected = logits_of(theirs.model, theirs.tokenizer, texts)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))
    assert editor.layer.num_keys > keys_before
    assert_same_codebook(editor.layer, reference)


@pytest.mark.parametrize("val_init, schedule_matters", [("cold", True), ("warm", False)])
def test_evaluation_schedule_moves_cold_values(zsre_records, val_init, schedule_matters):
    """Cold draws a value on every forward once keys exist, evaluation included: evaluating
    between edits ('immediate') changes the values later keys start from."""
    hparams = grace_hparams(eps=0.01, val_init=val_init, n_iter=2)
    finals = []
    for evaluate_between in (False, True):
        loaded = tiny_llama(seed=0)
        editor = GraceEditor(loaded, hparams, seed=SEED)
        for record in zsre_records[:4]:
            editor.edit(prompt_target(loaded.tokenizer, record.prompt, record.target))
            if evaluate_between:
                logits_of(editor.model, loaded.tokenizer, [f"{record.prompt} {record.target}"])
        finals.append(editor.layer.values.detach().clone())
    assert torch.equal(finals[0][0], finals[1][0])  # the first key's value is made before any evaluation
    assert (not torch.equal(finals[0], finals[1])) == schedule_matters


def test_reset_gives_unedited_outputs_and_repeats_the_stream(zsre_records):
    loaded = tiny_llama(seed=0)
    texts = teacher_forced_texts(zsre_records[:4])  # the last edited prompt is the one a teacher-forced forward keys on
    unedited = logits_of(loaded.model, loaded.tokenizer, texts)
    editor = GraceEditor(loaded, grace_hparams(eps=0.04), seed=SEED)
    assert all(torch.equal(a, b) for a, b in zip(logits_of(editor.model, loaded.tokenizer, texts), unedited))  # transparent before edits
    probes = [prompt_target(loaded.tokenizer, r.prompt, r.target) for r in zsre_records[:4]]
    first = [editor.edit(p).losses for p in probes]
    edited = logits_of(editor.model, loaded.tokenizer, texts)
    assert not all(torch.equal(a, b) for a, b in zip(edited, unedited))
    editor.reset()
    assert editor.layer.num_keys == 0 and editor.layer.key_id == -1
    assert all(torch.equal(a, b) for a, b in zip(logits_of(editor.model, loaded.tokenizer, texts), unedited))
    assert [editor.edit(p).losses for p in probes] == first  # the random stream starts again at the seed


def test_detach_restores_the_module_and_refusals(tiny):
    base = tiny.model.model.layers[1].mlp.down_proj
    hparams = grace_hparams().replace(inner_params=("model.layers[1].mlp.down_proj.weight",))
    with pytest.raises(DeferInputError, match="edit_path"):
        GraceEditor(tiny, hparams, edit_path="turbo")
    with pytest.raises(DeferInputError, match="needs a Linear"):
        GraceEditor(tiny, hparams.replace(inner_params=("model.layers[1].mlp",)))
    editor = GraceEditor(tiny, hparams)
    assert isinstance(tiny.model.model.layers[1].mlp.down_proj, GraceLayer)
    with pytest.raises(DeferInputError, match="already carries a GRACE layer"):
        GraceEditor(tiny, hparams)
    editor.edit(prompt_target(tiny.tokenizer, "The capital of France is", "Paris"))
    editor.detach()
    assert tiny.model.model.layers[1].mlp.down_proj is base
    assert all(not p.requires_grad for p in tiny.model.parameters())


# --- hparams -------------------------------------------------------------------------------


def easyedit_dataclass_fields() -> list[str]:
    """The field names of EasyEdit's GraceHyperParams, read from its source text (not imported)."""
    tree = ast.parse(EASYEDIT_HPARAMS_SOURCE.read_text())
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "GraceHyperParams")
    return [node.target.id for node in cls.body if isinstance(node, ast.AnnAssign)]


def test_easyedit_file_loads_unchanged():
    hparams = load_grace_hparams(EASYEDIT_YAML)
    assert hparams == GraceHParams(model_name="./hugging_cache/llama-2-7b", inner_params=("model.layers[27].mlp.down_proj.weight",))
    assert (hparams.edit_lr, hparams.n_iter, hparams.eps, hparams.device) == (1.0, 50, 1.0, 1)
    assert hparams.val_reg == "None"  # YAML's None is a string; its null is `null`
    assert (Path(__file__).parent.parent / "hparams" / "GRACE" / "llama-7b.yaml").read_text() == EASYEDIT_YAML.read_text()


def test_written_keys_are_easyedit_fields_and_round_trip(tmp_path):
    fields = easyedit_dataclass_fields()
    assert set(EASYEDIT_KEYS) == set(fields) and len(fields) == len(EASYEDIT_KEYS)
    original = load_grace_hparams(EASYEDIT_YAML)
    changed = original.replace(edit_lr=0.5, eps=3.0, val_init="warm", replacement="replace_all", eps_expand="moving_average", n_iter=7)
    written = save_grace_hparams(changed, tmp_path / "out.yaml")
    raw = yaml.safe_load(written.read_text())
    assert list(raw) == list(EASYEDIT_KEYS) and set(raw) == set(fields)
    assert load_grace_hparams(written) == changed
    assert isinstance(raw["edit_lr"], float) and isinstance(raw["eps"], float)
    assert not set(PRODUCT_ONLY_FIELDS) & set(raw)


def test_scientific_strings_are_coerced_like_easyedit(tmp_path):
    config = yaml.safe_load(EASYEDIT_YAML.read_text())
    config.update(edit_lr="1e-1", eps="5e-1")
    path = tmp_path / "sci.yaml"
    path.write_text(yaml.safe_dump(config))
    hparams = load_grace_hparams(path)
    assert (hparams.edit_lr, hparams.eps) == (0.1, 0.5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"alg_name": "DEFER"}, "key 'alg_name'"),
        ({"surprise": 1}, "unknown key(s) surprise"),
        ({"split_margin": 0.1}, "unknown key(s) split_margin"),
        ({"edit_lr": "fast"}, "key 'edit_lr'"),
        ({"n_iter": 2.5}, "key 'n_iter'"),
        ({"dist_fn": "cos"}, "key 'dist_fn'"),
        ({"val_init": "hot"}, "key 'val_init'"),
        ({"val_train": "pert"}, "key 'val_train'"),
        ({"eps_expand": "moving_avg"}, "key 'eps_expand'"),
        ({"replacement": "replace_first"}, "key 'replacement'"),
        ({"eps": -1}, "key 'eps'"),
        ({"inner_params": []}, "key 'inner_params'"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path, change, message):
    config = yaml.safe_load(EASYEDIT_YAML.read_text())
    config.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DeferInputError) as error:
        load_grace_hparams(path)
    text = str(error.value)
    assert str(path) in text and message in text and "\n" not in text


def test_missing_key_is_named(tmp_path):
    config = yaml.safe_load(EASYEDIT_YAML.read_text())
    del config["val_reg"]
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DeferInputError, match="missing key.*val_reg"):
        load_grace_hparams(path)


def test_product_only_values_are_not_written_as_easyedit_yaml():
    with pytest.raises(DeferInputError, match="key_label_order"):
        dump_grace_hparams(grace_hparams(key_label_order="append"))
    assert dump_grace_hparams(grace_hparams()).startswith("alg_name: GRACE\n")
