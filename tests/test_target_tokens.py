"""Which tokens a generation is compared with (`gen` = EasyEdit's, `genctx` = in context), and
text handled as EasyEdit handles it (a spaced `alt` becomes a double space). Both tokenizer
kinds are built here from a small corpus, with no download."""

from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from defer_core import DeferEditor, load_records, tiny_llama
from defer_core.data import EditRecord
from defer_core.evaluation import Scorer, build_probes

from .conftest import tiny_hparams

CORPUS = ["Which species is it? species", "The species of the cat is a species", "What is the capital? Paris", "Who wrote it? The author"] * 20
RECORD = EditRecord("0", "Which species is it?", "species", "The species of it is", "What is the capital?", "Paris")


def _wrap(core: Tokenizer) -> PreTrainedTokenizerFast:
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", core.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 / SmolLM2 / Llama-3 style: a word's leading space is part of its token (Ġspecies)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _wrap(core)


def sentencepiece_style() -> PreTrainedTokenizerFast:
    """Llama-2 style: the tokenizer prepends the word-boundary mark itself (▁species)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<s>", "</s>"]))
    return _wrap(core)


def _easyedit_targets(tok: PreTrainedTokenizerFast, target: str) -> tuple[int, ...]:
    """vanilla_generation's target ids (EasyEdit evaluate_utils.test_prediction_acc)."""
    return tuple(tok.encode(target, add_special_tokens=False))


def _teacher_forced_targets(tok: PreTrainedTokenizerFast, prompt: str, target: str) -> tuple[int, ...]:
    """test_prediction_acc's scored ids: prompt + ' ' + target after the prompt's tokens."""
    n_prompt = len(tok(prompt)["input_ids"])
    return tuple(tok(f"{prompt} {target}")["input_ids"][n_prompt:])


def test_genctx_targets_are_the_teacher_forced_tokens_for_a_byte_level_bpe():
    tok = byte_level_bpe()
    probes = build_probes(SimpleNamespace(tokenizer=tok), RECORD)
    for kind, prompt in (("rel", RECORD.prompt), ("gen", RECORD.rephrase)):
        genctx, gen = probes.probe("genctx", kind), probes.probe("gen", kind)
        assert genctx.target_ids == _teacher_forced_targets(tok, prompt, RECORD.target) == probes.probe("tf", kind).target_ids
        assert gen.target_ids == _easyedit_targets(tok, RECORD.target)
        assert genctx.prompt_ids == gen.prompt_ids == tuple(tok(prompt)["input_ids"])
    ctx, alone = probes.genctx_rel.target_ids, probes.gen_rel.target_ids
    assert tok.convert_ids_to_tokens(list(ctx)) == ["Ġspecies"], "in context the target is the spaced token"
    assert ctx != alone and tok.decode(list(alone)) == "species", "EasyEdit's ids lack the space a model generates"


def test_genctx_targets_equal_easyedits_for_a_sentencepiece_style_tokenizer():
    tok = sentencepiece_style()
    probes = build_probes(SimpleNamespace(tokenizer=tok), RECORD)
    for kind in ("rel", "gen"):
        assert probes.probe("genctx", kind).target_ids == _easyedit_targets(tok, RECORD.target) == probes.probe("gen", kind).target_ids
    assert tok.convert_ids_to_tokens(list(probes.genctx_rel.target_ids)) == ["▁species"]


def test_generation_scorings_sharing_one_generation_equal_each_alone(tiny, zsre_records):
    """gen and genctx read one generation of the longer budget; each equals its own run."""
    editor = DeferEditor(tiny, tiny_hparams(n_iter=10, edit_lr=5e-2), seed=7)
    probes = [build_probes(tiny, r) for r in zsre_records[:6]]
    for probe in probes[:3]:
        editor.edit(probe.edit)
    editor.adaptor.threshold = 0.2
    assert any(len(p.gen_rel.target_ids) != len(p.genctx_rel.target_ids) for p in probes), "budgets must differ"
    scorer = Scorer(tiny, batch_size=4)
    for kind in ("rel", "gen", "loc"):
        rows = {s: [p.probe(s, kind) for p in probes] for s in ("tf", "gen", "genctx")}
        together = scorer.predict_scorings(editor.adaptor, rows)
        assert together == {s: scorer.predict(editor.adaptor, s, rows[s]) for s in rows}
        assert scorer.predict_scorings(editor.adaptor, {"genctx": rows["genctx"], "gen": rows["gen"]}) == {s: together[s] for s in ("genctx", "gen")}


@pytest.fixture(scope="module")
def spaced_alt():
    """ZsRE record 26, the first whose `alt` starts with a space (" MAT-49")."""
    import json

    from defer_core.data import resolve_data_path

    raw = json.loads(resolve_data_path(None).read_text(encoding="utf-8"))[26]
    assert raw["alt"].startswith(" ") and raw["alt"] != raw["alt"].strip()
    return raw


def test_text_is_kept_as_easyedit_reads_it_by_default(spaced_alt):
    tok = tiny_llama().tokenizer
    record = load_records(None, limit=27)[26]
    assert (record.prompt, record.target) == (spaced_alt["src"], spaced_alt["alt"])
    # EasyEdit's DEFER tokenize(): f"{prompt} {target_new}" with the record's text unchanged
    easyedit_ids = tuple(tok(f"{spaced_alt['src']} {spaced_alt['alt']}")["input_ids"])
    probes = build_probes(SimpleNamespace(tokenizer=tok), record)
    assert probes.edit.ids == easyedit_ids
    assert tok.decode(list(probes.edit.target_ids)).startswith("  MAT-49"), "the spaced alt is a double space, as in EasyEdit"


def test_strip_is_an_explicit_option(spaced_alt):
    tok = tiny_llama().tokenizer
    record = load_records(None, limit=27, strip=True)[26]
    assert record.target == spaced_alt["alt"].strip()
    probes = build_probes(SimpleNamespace(tokenizer=tok), record)
    assert probes.edit.ids == tuple(tok(f"{spaced_alt['src']} {spaced_alt['alt'].strip()}")["input_ids"])
    assert probes.edit.ids != build_probes(SimpleNamespace(tokenizer=tok), load_records(None, limit=27)[26]).edit.ids
