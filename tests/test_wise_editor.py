"""WISE in defer_core against a plain restatement of EasyEdit's (tests/reference_wise.py): the same
losses at every step, the same side memory (shard, saved shards, merged weight) after every
edit, saving and merging crossed, the same outputs; and the hparams file and irrelevant prompts
exactly as EasyEdit has them."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from defer_core import DeferInputError, tiny_llama
from defer_core.data import default_data_dir
from defer_core.wise import WiseEditor
from defer_core.wise_batch import WiseRequest, irrelevant_prompts, read_irrelevant_prompts
from defer_core.wise_hparams import dump_wise_hparams, load_wise_hparams, save_wise_hparams

from .reference_wise import Config, ReferenceWise, get_context_templates, tokenize

ROOT = Path(__file__).resolve().parent.parent
EASYEDIT_YAML = ROOT / "hparams" / "WISE" / "llama-7b.yaml"  # EasyEdit hparams/WISE/llama-7b.yaml, unchanged
EASYEDIT_CLASS = Path(__file__).parent / "fixtures" / "easyedit_wise_hparams.py.txt"  # a copy of easyeditor/models/wise/wise_hparams.py
LAYER = 2  # the tiny Llama has 4 layers
SEED = 42  # EasyEdit's seed_everything(42)


def easyedit_fields() -> list[str]:
    """The annotated fields of EasyEdit's WISEHyperParams, read from its source."""
    tree = ast.parse(EASYEDIT_CLASS.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "WISEHyperParams")
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)]


def tiny_wise(**changes):
    base = load_wise_hparams(EASYEDIT_YAML)
    return base.replace(inner_params=(f"model.layers[{LAYER}].mlp.down_proj.weight",), model_name="tiny-llama", device="cpu", **changes)


# -- hparams ---------------------------------------------------------------------------------------


def test_easyedit_yaml_loads_unchanged():
    h = load_wise_hparams(EASYEDIT_YAML)
    assert (h.edit_lr, h.n_iter, h.mask_ratio, h.norm_constraint, h.act_ratio) == (1.0, 70, 0.2, 1.0, 0.88)
    assert h.act_margin == (5.0, 20.0, 10.0)
    assert (h.save_freq, h.merge_freq, h.merge_alg, h.densities, h.weights) == (500, 1000, "ties", 0.53, 1.0)
    assert (h.retrieve, h.replay, h.objective_optimization, h.device) == (True, False, "only_label", 1)
    assert h.module_path == "model.layers[27].mlp.down_proj.weight" and h.sequential_edit


def test_written_keys_are_easyedit_fields_and_round_trip(tmp_path):
    original = load_wise_hparams(EASYEDIT_YAML).replace(edit_lr=0.5, retrieve=False)
    written = save_wise_hparams(original, tmp_path / "wise.yaml")
    raw = yaml.safe_load(written.read_text())
    margins = raw.pop("act_margin")  # WISEHyperParams.from_hparams splits it into alpha, beta, gamma
    assert sorted(list(raw) + ["alpha", "beta", "gamma"]) == sorted(easyedit_fields())
    assert margins == [5.0, 20.0, 10.0]
    assert load_wise_hparams(written) == original
    assert dump_wise_hparams(original).startswith("# sequential_edit: true")


@pytest.mark.parametrize(
    "change, message",
    [({"alg_name": "DEFER"}, "alg_name"), ({"surprise": 1}, "surprise"), ({"edit_lr": "fast"}, "edit_lr"),
     ({"act_margin": [1, 2]}, "act_margin"), ({"merge_freq": 750}, "merge_freq"), ({"retrieve": "yes"}, "retrieve")],
)
def test_bad_values_name_file_and_key(tmp_path, change, message):
    config = yaml.safe_load(EASYEDIT_YAML.read_text())
    config.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DeferInputError) as error:
        load_wise_hparams(path)
    assert str(path) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


def test_scientific_strings_and_integer_norm_constraint(tmp_path):
    config = yaml.safe_load(EASYEDIT_YAML.read_text())
    config.update(edit_lr="1e-4", norm_constraint=1)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(config))
    h = load_wise_hparams(path)
    assert h.edit_lr == 1e-4 and h.norm_constraint is None  # EasyEdit clamps only when it is a float


# -- irrelevant prompts ------------------------------------------------------------------------------


def test_irrelevant_prompts_are_easyedits_list():
    raw = json.loads((default_data_dir() / "zsre" / "zsre_mend_train-1k.json").read_text())
    prompts = read_irrelevant_prompts(1000)
    assert len(prompts) == 1000
    assert prompts[0] == "nq question: john goodman's character in the big lebowski Walter Sobchak"
    assert prompts[:3] == [r["loc"] + " " + r["loc_ans"] for r in raw[:3]]
    for index in (534, 723):  # empty `alt`, locality prompt still given
        assert raw[index]["alt"] == "" and prompts[index] == raw[index]["loc"] + " " + raw[index]["loc_ans"]
    assert read_irrelevant_prompts(10) == prompts[:10]
    repeated = irrelevant_prompts(raw[:3], 7, rng=__import__("random").Random(0))
    assert len(repeated) == 7 and sorted(set(repeated)) == sorted(prompts[:3])


# -- the edit stream against the reference ----------------------------------------------------------


def _reference(hparams):
    loaded = tiny_llama(seed=0)
    config = Config(**{k: v for k, v in vars(hparams).items()})
    tok = copy.deepcopy(loaded.tokenizer)
    tok.padding_side = "left"
    tok.pad_token_id = tok.eos_token_id
    templates = get_context_templates(loaded.model, tok)
    return loaded, ReferenceWise(loaded.model, config, LAYER), tok, templates


def _assert_same_memory(editor, ref):
    a, m = ref.adapter, editor.memory
    assert torch.equal(m.new_weight, a.new_weight.detach())
    assert torch.equal(m.merged, a.layer.weight.detach())
    assert len(m.memory) == len(a.memory_weight)
    for mine, theirs in zip(m.memory, a.memory_weight):
        assert torch.equal(mine, theirs.detach())
    assert [x.min_a for x in m.memory_acts] == [x.min_a for x in a.memory_mean_act]
    assert m.editing_act.min_a == a.editing_mean_act.min_a and m.edit_count == a.editing_total_cnt
    assert torch.equal(m.weight_mask, a.weight_mask)


def _outputs(call, tok, texts):
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            rows.append(call(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits)
    return rows


@pytest.mark.parametrize("edit_path", ["plain", "fast"])
@pytest.mark.parametrize("retrieve", [True, False])
def test_stream_matches_reference(zsre_records, retrieve, edit_path):
    """Both edit paths: the fast one (suffix-only steps) must give the reference's numbers bit for bit too."""
    # act_ratio 5: on this tiny model the threshold then falls among the probes' distances, so
    # after the stream some probes take the original output and some a side weight
    hparams = tiny_wise(n_iter=4, save_freq=2, merge_freq=4, retrieve=retrieve, act_ratio=5.0)
    records = zsre_records[:6]
    irrelevant = read_irrelevant_prompts(len(records))
    ours = tiny_llama(seed=0)
    editor = WiseEditor(ours, hparams, seed=SEED, edit_path=edit_path, irrelevant=irrelevant)
    assert editor.edit_path == edit_path
    theirs, ref, tok, templates = _reference(hparams)
    assert editor.templates == templates
    np.random.seed(SEED)
    probes = [r.prompt + " " + r.target for r in records] + [r.locality_prompt for r in records]
    unedited = _outputs(tiny_llama(seed=0).model, tok, probes)
    for index, record in enumerate(records):
        stats = editor.edit(WiseRequest(record.prompt, record.target))
        request = {"prompt": record.prompt, "target_new": record.target, "loc_prompt": irrelevant[index]}
        expected = ref.edit(tokenize(request, tok, templates))
        assert stats.losses == expected, f"edit {index}"
        _assert_same_memory(editor, ref)
        if index == 2:  # an evaluation between edits (EasyEdit folds a pending shard there in WISE-Merge)
            mid = _outputs(ours.model, tok, probes[:3])
            assert all(torch.equal(x, y) for x, y in zip(mid, _outputs(ref, tok, probes[:3])))
            _assert_same_memory(editor, ref)
    # retrieve: merged shard of edits 1-4 and the shard of edits 5-6; merge: the shard of 5-6 until evaluated
    assert len(editor.memory.memory) == (2 if retrieve else 1)
    assert retrieve or not torch.equal(editor.memory.merged, editor.memory.base.weight)
    after = _outputs(ours.model, tok, probes)
    expected_after = _outputs(ref, tok, probes)
    assert all(torch.equal(x, y) for x, y in zip(after, expected_after))
    _assert_same_memory(editor, ref)
    assert len(editor.memory.memory) == (2 if retrieve else 0)
    unchanged = sum(torch.equal(x, y) for x, y in zip(after, unedited))
    assert 0 < unchanged < len(probes), "some probes should route to a side weight, some not"


def test_literal_head_mode_keeps_only_the_last_edit(zsre_records):
    """sequential_edit=False: a fresh side memory per edit, as EasyEdit HEAD's WISE.__init__ builds."""
    hparams = tiny_wise(n_iter=3, save_freq=2, merge_freq=4, sequential_edit=False)
    irrelevant = read_irrelevant_prompts(2)
    editor = WiseEditor(tiny_llama(seed=0), hparams, seed=SEED, irrelevant=irrelevant)
    requests = [{"prompt": r.prompt, "target_new": r.target, "loc_prompt": p} for r, p in zip(zsre_records[:2], irrelevant)]
    np.random.seed(SEED)
    _, first, tok, templates = _reference(hparams)
    first.edit(tokenize(requests[0], tok, templates))
    _, second, _, _ = _reference(hparams)  # a fresh adapter; numpy's stream goes on
    expected = second.edit(tokenize(requests[1], tok, templates))
    for record in zsre_records[:2]:
        stats = editor.edit(WiseRequest(record.prompt, record.target))
    assert stats.losses == expected
    _assert_same_memory(editor, second)
    assert editor.memory.edit_count == 1 and not editor.memory.memory


def test_reset_and_detach(zsre_records):
    loaded = tiny_llama(seed=0)
    module = loaded.model.model.layers[LAYER].mlp.down_proj
    texts = [r.prompt + " " + r.target for r in zsre_records[:3]]
    tok = loaded.tokenizer
    before = _outputs(loaded.model, tok, texts)
    editor = WiseEditor(loaded, tiny_wise(n_iter=3, save_freq=1, merge_freq=2), seed=0, irrelevant=read_irrelevant_prompts(2))
    assert all(torch.equal(x, y) for x, y in zip(_outputs(loaded.model, tok, texts), before)), "transparent before any edit"
    for record in zsre_records[:2]:
        editor.edit(WiseRequest(record.prompt, record.target))
    assert any(not torch.equal(x, y) for x, y in zip(_outputs(loaded.model, tok, texts), before))
    with editor.bypassed():
        assert all(torch.equal(x, y) for x, y in zip(_outputs(loaded.model, tok, texts), before))
    editor.reset()
    assert all(torch.equal(x, y) for x, y in zip(_outputs(loaded.model, tok, texts), before))
    assert editor.edits_done == 0 and not editor.memory.memory
    editor.detach()
    assert loaded.model.model.layers[LAYER].mlp.down_proj is module
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert all(torch.equal(x, y) for x, y in zip(_outputs(loaded.model, tok, texts), before))


def test_prompt_target_probe_and_refusals(zsre_records):
    from defer_core.evaluation import build_probes

    loaded = tiny_llama(seed=0)
    record = zsre_records[0]
    editor = WiseEditor(loaded, tiny_wise(n_iter=1), irrelevant=["x y"])
    assert editor.request_of(build_probes(loaded, record).edit) == WiseRequest(record.prompt, record.target)
    editor.detach()
    with pytest.raises(DeferInputError, match="edit_path must be one of fast, plain"):
        WiseEditor(loaded, tiny_wise(), edit_path="quick")
    with pytest.raises(DeferInputError, match="merge_alg 'dare_ties'"):
        WiseEditor(loaded, tiny_wise(merge_alg="dare_ties"))
    with pytest.raises(DeferInputError, match="replay"):
        WiseEditor(loaded, tiny_wise(replay=True))


def test_padded_rows_route_as_alone(zsre_records):
    """EasyEdit routes a whole batch on `.item()` (batch size 1); here each row of a padded batch
    takes the decision it takes alone, over its own positions (the project's scoring right-pads
    and calls the decoder with an attention mask)."""
    loaded = tiny_llama(seed=0)
    editor = WiseEditor(loaded, tiny_wise(n_iter=4, save_freq=2, merge_freq=4, act_ratio=5.0), seed=SEED, irrelevant=read_irrelevant_prompts(6))
    for record in zsre_records[:6]:
        editor.edit(WiseRequest(record.prompt, record.target))
    rows = [loaded.tokenizer(r.prompt + " " + r.target)["input_ids"] for r in zsre_records[:6]]
    rows += [loaded.tokenizer(r.locality_prompt)["input_ids"] for r in zsre_records[:6]]
    decoder = loaded.model.get_decoder()
    alone, choices = [], []
    with torch.no_grad():
        for ids in rows:
            alone.append(decoder(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).last_hidden_state[0])
            choices += editor.memory.last_choice
        width = max(map(len, rows))
        ids = torch.tensor([r + [2] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        batched = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert editor.memory.last_choice == choices and 0 < choices.count(0) < len(rows)
    for row, own in enumerate(alone):
        torch.testing.assert_close(batched[row, : own.shape[0]], own, rtol=1e-5, atol=1e-5)


def test_other_merge_algorithms_follow_easyedits_gta_and_linear():
    """magnitude / magnitude_norm / sign (EasyEdit's GTA settings) and linear, on small tensors."""
    from defer_core.wise_merge import merge

    from .reference_wise import ties

    base = torch.zeros(2, 2)
    shards = [torch.tensor([[1.0, -2.0], [3.0, 0.5]]), torch.tensor([[-1.0, -1.0], [1.0, 4.0]])]
    weights = [0.5, 0.5]
    assert torch.equal(merge("ties", weights, base, shards, 0.5), ties(weights, base, shards, 0.5))
    # sign: no trimming, sign election by the summed deltas, normalised by the agreeing weights
    assert torch.equal(merge("sign", weights, base, shards, None), torch.tensor([[1.0, -1.5], [2.0, 2.25]]))
    # magnitude (density 0.5 keeps 2 of 4 entries per shard), summed unnormalised / normalised
    trimmed = [torch.tensor([[0.0, -2.0], [3.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 4.0]])]
    assert torch.equal(merge("magnitude", weights, base, shards, 0.5), 0.5 * trimmed[0] + 0.5 * trimmed[1])
    assert torch.equal(merge("magnitude_norm", weights, base, shards, 0.5), 0.5 * trimmed[0] + 0.5 * trimmed[1])
    assert torch.equal(merge("linear", [0.25], base + 1, shards, None), 0.25 * shards[0] + 0.75 * (base + 1))
