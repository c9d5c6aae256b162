"""GRACE and WISE trials through defer_core's trial API against a naive loop: the plain
restatements of EasyEdit's editors (tests/reference_grace.py, tests/reference_wise.py) edited
record by record, scored one row at a time with a full forward (tf) and
`model.generate(use_cache=False)` (gen, genctx), in the order defer_core.lifelong_view documents.
Equality is exact (==): the same float32 operations in the same order on one thread, with the
same random streams (GRACE: the product's generator and torch's global one seeded alike; WISE:
numpy's), so any difference is a difference in behaviour. Also the refusals and the registry."""

from __future__ import annotations

import contextlib
import dataclasses
import copy
from pathlib import Path
from statistics import fmean

import numpy as np
import pytest
import torch

from defer_core import DeferInputError, TrialPlan, run_trial, run_trials, tiny_llama
from defer_core.editors import EDITORS, editor_of, load_editor_hparams, save_editor_hparams
from defer_core.grace_hparams import GraceHParams, load_grace_hparams
from defer_core.hparams import load_hparams
from defer_core.wise_batch import read_irrelevant_prompts
from defer_core.wise_hparams import load_wise_hparams

from .conftest import tiny_hparams
from .reference_defer import accuracy, reference_teacher_forced
from .reference_grace import attach_reference, reference_edit
from .reference_wise import Config, ReferenceWise, get_context_templates, tokenize

ROOT = Path(__file__).resolve().parent.parent
LAYER = 2
GRACE_SEED = 7
WISE_SEED = 42
T = 4
MILESTONES = (2, 4)
KINDS = ("rel", "gen", "loc")


def grace_hparams(**changes) -> GraceHParams:
    base = GraceHParams(model_name="tiny-llama", inner_params=(f"model.layers[{LAYER}].mlp.down_proj.weight",), n_iter=3, eps=0.04, device="cpu")
    return base.replace(**changes)


def wise_hparams(**changes):
    base = load_wise_hparams(ROOT / "hparams" / "WISE" / "llama-7b.yaml")
    settings = dict(n_iter=3, save_freq=1, merge_freq=2, act_ratio=1.0, retrieve=True)  # act_ratio 1: some probes route to a shard
    settings.update(changes)
    return base.replace(inner_params=(f"model.layers[{LAYER}].mlp.down_proj.weight",), model_name="tiny-llama", device="cpu", **settings)


# -- the naive side ---------------------------------------------------------------------------------


def texts_of(record) -> dict[str, tuple[str, str]]:
    return {"rel": (record.prompt, record.target), "gen": (record.rephrase, record.target), "loc": (record.locality_prompt, record.locality_answer)}


class Naive:
    """An editor restated naively, on its own tiny Llama, with what scoring it needs."""

    def __init__(self) -> None:
        self.loaded = tiny_llama(seed=0)
        self.tok = self.loaded.tokenizer
        self.model = self.loaded.model

    def call(self, **tokens):
        return self.model(**tokens)

    def before_generation(self) -> None:
        pass

    def before_teacher_forced(self, prompt: str) -> None:
        pass

    @contextlib.contextmanager
    def kept(self):
        yield

    def tf_target(self, prompt: str, target: str) -> list[int]:
        return self.tok(prompt + " " + target)["input_ids"][len(self.tok(prompt)["input_ids"]) :]

    @torch.no_grad()
    def generated(self, prompt: str, budget: int) -> list[int]:
        self.before_generation()
        encoded = self.tok(prompt, return_tensors="pt")
        out = self.model.generate(**encoded, max_new_tokens=budget, pad_token_id=self.tok.eos_token_id, do_sample=False, use_cache=False)
        return out[0].tolist()

    def predictions(self, record, scorings) -> dict[tuple[str, str], list[int]]:
        """Per probe kind: one generation of the longest budget (windows for gen / genctx), then tf."""
        predicted = {}
        generation = [s for s in scorings if s != "tf"]
        for kind, (prompt, target) in texts_of(record).items():
            budgets = {"gen": len(self.tok.encode(target, add_special_tokens=False)), "genctx": len(self.tf_target(prompt, target))}
            if generation:
                sequence = self.generated(prompt, max(budgets[s] for s in generation))
                n_prompt = len(self.tok(prompt)["input_ids"])
                for scoring in generation:
                    predicted[scoring, kind] = sequence[: n_prompt + budgets[scoring]][-budgets[scoring] :]
            if "tf" in scorings:
                self.before_teacher_forced(prompt)
                predicted["tf", kind] = reference_teacher_forced(self.call, self.tok, prompt, target)[0]
        return predicted

    def scores(self, record, scorings, unedited) -> dict[str, float]:
        predicted = self.predictions(record, scorings)
        row = {}
        for scoring in scorings:
            for kind in ("rel", "gen"):
                prompt, target = texts_of(record)[kind]
                expected = self.tok.encode(target, add_special_tokens=False) if scoring == "gen" else self.tf_target(prompt, target)
                row[f"{kind}_{scoring}"] = accuracy(predicted[scoring, kind], expected)
            row[f"loc_{scoring}"] = accuracy(predicted[scoring, "loc"], unedited[scoring, record.record_id])
        return row

    def success(self, record) -> float:
        with self.kept():
            self.before_teacher_forced(record.prompt)
            predicted, expected = reference_teacher_forced(self.call, self.tok, record.prompt, record.target)
        return accuracy(predicted, expected)


class NaiveGrace(Naive):
    def __init__(self, hparams: GraceHParams, key_at_prompt: bool = False) -> None:
        super().__init__()
        self.hparams, self.key_at_prompt = hparams, key_at_prompt
        self.ref = attach_reference(
            self.model, LAYER, eps=hparams.eps, val_init=hparams.val_init, val_train=hparams.val_train,
            replacement=hparams.replacement, eps_expand=hparams.eps_expand,
        )
        torch.manual_seed(GRACE_SEED)

    def edit(self, record) -> list[float]:
        h = self.hparams
        return reference_edit(self.model, self.ref, self.tok, record.prompt, record.target, h.edit_lr, h.n_iter)

    def before_generation(self) -> None:
        self.ref.key_id = -1  # GRACE.generate

    def before_teacher_forced(self, prompt: str) -> None:
        if self.key_at_prompt:  # grace_key: prompt, the scored prompt's own last token
            self.ref.key_id = len(self.tok(prompt)["input_ids"]) - 1

    @contextlib.contextmanager
    def kept(self):
        rng, key_id = torch.get_rng_state(), self.ref.key_id
        yield
        torch.set_rng_state(rng)
        self.ref.key_id = key_id


class NaiveWise(Naive):
    def __init__(self, hparams) -> None:
        super().__init__()
        self.edit_tok = copy.deepcopy(self.tok)
        self.edit_tok.padding_side = "left"
        self.edit_tok.pad_token_id = self.edit_tok.eos_token_id
        self.templates = get_context_templates(self.model, self.edit_tok)
        self.ref = ReferenceWise(self.model, Config(**vars(hparams)), LAYER)
        self.irrelevant = read_irrelevant_prompts(T)
        self.done = 0
        np.random.seed(WISE_SEED)

    def edit(self, record) -> list[float]:
        request = {"prompt": record.prompt, "target_new": record.target, "loc_prompt": self.irrelevant[self.done]}
        self.done += 1
        return self.ref.edit(tokenize(request, self.edit_tok, self.templates))

    def call(self, **tokens):
        return self.ref(**tokens)  # WISE.__call__: WISE-Merge folds a pending shard first

    @contextlib.contextmanager
    def kept(self):
        a = self.ref.adapter
        fields = {name: getattr(a, name) for name in ("new_weight", "editing_mean_act", "editing_total_cnt", "merge_cnt")}
        lists, weight = (list(a.memory_weight), list(a.memory_mean_act)), a.layer.weight
        yield
        for name, value in fields.items():
            setattr(a, name, value)
        a.memory_weight, a.memory_mean_act = lists
        a.layer.weight = weight


def unedited_predictions(records, scorings) -> dict[tuple[str, str], list[int]]:
    """The unedited model's loc predictions per scoring, naively."""
    naive = Naive()
    return {(s, r.record_id): naive.predictions(r, (s,))[s, "loc"] for r in records for s in scorings}


def naive_trial(make, records, protocol, scorings, milestones=MILESTONES):
    """(milestone metrics, milestone record rows, final losses, successes), as the protocol runs."""
    unedited = unedited_predictions(records, scorings)
    metrics, rows_at, losses, successes = [], [], [], []
    if protocol == "chunks":
        for size in milestones:
            per_chunk = []
            for chunk in range(len(records) // size):
                naive = make()
                for record in records[chunk * size : (chunk + 1) * size]:
                    losses.append(naive.edit(record)[-1])
                    successes.append(naive.success(record))
                with naive.kept():
                    per_chunk.append([naive.scores(r, scorings, unedited) for r in records[chunk * size : (chunk + 1) * size]])
            means = [{k: fmean(row[k] for row in rows) for k in rows[0]} for rows in per_chunk]
            metrics.append({k: fmean(m[k] for m in means) for k in means[0]})
            rows_at.append([row for rows in per_chunk for row in rows])
        return metrics, rows_at, losses, successes
    naive, at_edit = make(), []
    for n, record in enumerate(records, start=1):
        losses.append(naive.edit(record)[-1])
        if protocol == "immediate":
            at_edit.append(naive.scores(record, scorings, unedited))
            successes.append(at_edit[-1]["rel_tf"] if "tf" in scorings else naive.success(record))
        else:
            successes.append(naive.success(record))
        if n in milestones:
            if protocol == "immediate":
                rows = at_edit[:n]
            else:
                with naive.kept():
                    rows = [naive.scores(r, scorings, unedited) for r in records[:n]]
            rows_at.append(rows)
            metrics.append({k: fmean(row[k] for row in rows) for k in rows[0]})
    return metrics, rows_at, losses, successes


def assert_trial_matches(hparams, make, records, protocol, scorings, edit_path="fast", milestones=MILESTONES, grace_key="sticky"):
    records = records[:T]
    plan = TrialPlan(protocol=protocol, milestones=milestones, scorings=scorings, edit_path=edit_path, grace_key=grace_key)
    seed = GRACE_SEED if isinstance(hparams, GraceHParams) else WISE_SEED
    result = run_trial(tiny_llama(seed=0), records, hparams, plan, seed=seed)
    metrics, rows_at, losses, successes = naive_trial(make, records, protocol, scorings, milestones)
    assert [m.n_edits for m in result.milestones] == list(milestones)
    assert [m.protocol for m in result.milestones] == [protocol] * len(milestones)
    assert [e.final_loss for e in result.edits] == losses
    assert [e.success for e in result.edits] == successes
    assert [m.metrics for m in result.milestones] == metrics
    assert [[r.metrics for r in m.records] for m in result.milestones] == rows_at
    assert all(m.gates == () and m.grid == () for m in result.milestones)
    assert all(e.gate is None and e.success_on is None and e.success_off is None for e in result.edits)
    return result


COVERING = {"eps": 100.0}  # a first key covers every probe until the next edit splits its radius: Loc moves
GRACE_CASES = [
    *[({"val_init": "warm", "replacement": "replace_all", **COVERING}, p, ("tf", "gen")) for p in ("stream", "immediate", "chunks")],
    *[({"val_init": "cold", **COVERING}, p, ("tf", "gen")) for p in ("stream", "immediate", "chunks")],
    ({"val_init": "cold"}, "stream", ("tf",)),  # new keys and splits (eps 0.04); tf keys at the last edit's prompt
    ({"val_init": "cold"}, "immediate", ("gen",)),
    ({"val_init": "warm"}, "chunks", ("gen",)),
    ({"val_init": "cold", **COVERING}, "immediate", ("tf", "gen", "genctx")),
]


@pytest.mark.parametrize("changes, protocol, scorings", GRACE_CASES)
def test_grace_trial_equals_naive_loop(zsre_records, changes, protocol, scorings):
    hparams = grace_hparams(**changes)
    result = assert_trial_matches(hparams, lambda: NaiveGrace(hparams), zsre_records, protocol, scorings)
    if changes.get("eps") == COVERING["eps"] and protocol == "immediate":
        assert any(v < 1.0 for m in result.milestones for k, v in m.metrics.items() if k.startswith("loc_")), "locality should move"
        assert any(v > 0.0 for m in result.milestones for k, v in m.metrics.items() if k.startswith("rel_"))


@pytest.mark.parametrize("changes, protocol, scorings", [
    ({"val_init": "cold"}, "stream", ("tf",)),  # new keys and splits: sticky keys most records at another position
    ({"val_init": "cold"}, "immediate", ("tf", "gen")),
    ({"val_init": "warm", **COVERING}, "chunks", ("tf",)),
])
def test_grace_keyed_at_each_prompt_equals_naive_loop(zsre_records, changes, protocol, scorings):
    """grace_key: prompt, every teacher-forced forward keyed at its own last prompt token,
    against the naive loop that sets key_id so before each one; in the stream it scores
    otherwise than EasyEdit's sticky position."""
    hparams = grace_hparams(**changes)
    keyed = assert_trial_matches(hparams, lambda: NaiveGrace(hparams, key_at_prompt=True), zsre_records, protocol, scorings, grace_key="prompt")
    if protocol == "stream":
        sticky = run_trial(tiny_llama(seed=0), zsre_records[:T], hparams, TrialPlan(protocol=protocol, milestones=MILESTONES, scorings=scorings), seed=GRACE_SEED)
        assert [m.metrics for m in keyed.milestones] != [m.metrics for m in sticky.milestones]
        assert [e.final_loss for e in keyed.edits] == [e.final_loss for e in sticky.edits], "the key position at evaluation does not change the edits"


def test_grace_key_is_refused_for_the_other_editors(tiny, zsre_records):
    for hparams in (tiny_hparams(), wise_hparams()):
        one_line_error(lambda: run_trial(tiny, zsre_records[:1], hparams, TrialPlan(grace_key="prompt")), "grace_key: prompt", "leave it at sticky")
    one_line_error(lambda: TrialPlan(grace_key="own"), "grace_key must be one of sticky, prompt, got 'own'")


def test_grace_plain_edit_path_equals_naive_loop(zsre_records):
    hparams = grace_hparams(val_init="cold")
    assert_trial_matches(hparams, lambda: NaiveGrace(hparams), zsre_records, "stream", ("tf", "gen"), edit_path="plain")


WISE_CASES = [
    ({}, "stream", ("tf", "gen")),
    ({}, "immediate", ("tf", "gen")),
    ({}, "chunks", ("tf", "gen")),
    ({"save_freq": 2, "merge_freq": 4}, "immediate", ("gen",)),
    # WISE-Merge: milestone 3's fold (edit 3's unsaved shard merged, the next shard restarted) is put
    # back, so edit 4 goes on training edit 3's shard; an immediate evaluation's fold is kept
    ({"retrieve": False, "save_freq": 2, "merge_freq": 4}, "stream", ("tf",)),
    ({"retrieve": False, "save_freq": 2, "merge_freq": 4}, "immediate", ("tf",)),
]


@pytest.mark.parametrize("changes, protocol, scorings", WISE_CASES)
def test_wise_trial_equals_naive_loop(zsre_records, changes, protocol, scorings):
    """The plan's default edit path (fast: suffix-only steps) against the naive full-forward loop."""
    hparams = wise_hparams(**changes)
    milestones = (3, 4) if not hparams.retrieve else MILESTONES
    assert_trial_matches(hparams, lambda: NaiveWise(hparams), zsre_records, protocol, scorings, milestones=milestones)


def test_wise_plain_edit_path_equals_naive_loop(zsre_records):
    hparams = wise_hparams(retrieve=False, save_freq=2, merge_freq=4)
    assert_trial_matches(hparams, lambda: NaiveWise(hparams), zsre_records, "stream", ("tf",), milestones=(3, 4), edit_path="plain")


# -- refusals ---------------------------------------------------------------------------------------


def one_line_error(call, *needles):
    with pytest.raises(DeferInputError) as error:
        call()
    text = str(error.value)
    assert "\n" not in text and all(n in text for n in needles), text


@pytest.mark.parametrize("hparams", [grace_hparams(), wise_hparams()], ids=["grace", "wise"])
def test_refusals_are_one_line(tiny, zsre_records, hparams, tmp_path):
    records = zsre_records[:2]
    plan = TrialPlan(milestones=(1, 2))
    one_line_error(lambda: run_trial(tiny, records, hparams, TrialPlan(milestones=(2,), threshold_grid=(0.5,))), "threshold_grid")
    one_line_error(lambda: run_trial(tiny, records, hparams, TrialPlan(milestones=(2,), threshold_scores=False)), "threshold_scores", "curve mode")
    one_line_error(lambda: run_trial(tiny, records, hparams, TrialPlan(protocol=("stream", "immediate"), milestones=(2,))), "protocol", "share")
    one_line_error(lambda: run_trials(tiny, records, [hparams, tiny_hparams()], plan, seeds=[0, 1]), "one editor")
    assert type(tiny.model.model.layers[LAYER].mlp.down_proj).__name__ == "Linear", "a refusal attaches nothing"


@pytest.mark.parametrize("hparams", [grace_hparams(), wise_hparams()], ids=["grace", "wise"])
def test_several_members_run_one_after_another_each_as_alone(tiny, zsre_records, hparams):
    """No packed form: run_trials runs K GRACE or WISE members in turn, callbacks keeping the index."""
    records, plan = zsre_records[:2], TrialPlan(milestones=(1, 2))
    seen: list[tuple[int, int]] = []
    together = run_trials(tiny, records, [hparams, hparams], plan, seeds=[0, 1], on_milestone=lambda k, m: seen.append((k, m.n_edits)))
    alone = [run_trial(tiny, records, hparams, plan, seed=seed) for seed in (0, 1)]
    def numbers(result):  # a milestone's wall seconds differ run to run
        return [(m.n_edits, m.metrics, m.records) for m in result.milestones]

    assert [numbers(r) for r in together] == [numbers(r) for r in alone]
    assert [[e.final_loss for e in r.edits] for r in together] == [[e.final_loss for e in r.edits] for r in alone]
    assert seen == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_missing_training_file_is_named(tiny, zsre_records, tmp_path):
    missing = tmp_path / "nowhere" / "train.json"
    one_line_error(lambda: run_trial(tiny, zsre_records[:1], wise_hparams(), TrialPlan(), irrelevant_path=missing), str(missing))
    assert type(tiny.model.model.layers[LAYER].mlp.down_proj).__name__ == "Linear"


# -- the registry -----------------------------------------------------------------------------------


def test_registry_reads_easyedit_files_unchanged_and_writes_each_layout(tmp_path):
    files = {"grace": ROOT / "hparams" / "GRACE" / "llama-7b.yaml", "wise": ROOT / "hparams" / "WISE" / "llama-7b.yaml"}
    files |= {f"defer-{p.stem}": p for p in sorted((ROOT / "hparams" / "DEFER").glob("*.yaml"))}
    own = {"grace": load_grace_hparams, "wise": load_wise_hparams}
    assert EDITORS == ("defer", "grace", "wise")
    for name, path in files.items():
        hparams = load_editor_hparams(path)
        editor = name.split("-")[0]
        assert editor_of(hparams) == editor
        assert hparams == own.get(editor, load_hparams)(path)
        written = save_editor_hparams(hparams, tmp_path / f"{name}.yaml", dtype="float32", notes=["tuned here"])
        assert written.read_text().splitlines()[1] == "# tuned here"
        assert load_editor_hparams(written) == hparams
    bad = tmp_path / "rome.yaml"
    bad.write_text(files["grace"].read_text().replace('alg_name: "GRACE"', 'alg_name: "ROME"'))
    one_line_error(lambda: load_editor_hparams(bad), str(bad), "key 'alg_name'", "ROME")
    bad.write_text("model_name: x\n")
    one_line_error(lambda: load_editor_hparams(bad), str(bad), "alg_name")
    one_line_error(lambda: editor_of(object()), "hparams")


def test_edit_rows_without_gates_reach_parquet_as_null(tmp_path):
    """EditOutcome.gate / success_on / success_off are None for GRACE and WISE."""
    import pyarrow as pa

    from orchestrator.results.rows import SCHEMAS, EditRow, record

    row = EditRow(sweep_id="s", trial_id="t", edit_index=1, chunk=0, record_id="r", final_loss=0.5, edit_seconds=1.0,
                  success=1.0, gate=None, success_on=None, success_off=None, seed=0, order=0)
    table = pa.Table.from_pylist([record(row)], schema=SCHEMAS["edits"])
    assert table.column("gate").null_count == table.column("success_on").null_count == table.column("success_off").null_count == 1


def test_registry_imports_no_torch():
    """The orchestrator's export and CLI read hparams files without torch or transformers."""
    import subprocess
    import sys

    code = "import sys, defer_core.editors; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wise_edits_the_text_as_written(zsre_records):
    """EasyEdit passes targets unstripped; WISE gets the record's text, not decoded ids."""
    record = dataclasses.replace(zsre_records[0], target=" " + zsre_records[0].target)
    hparams = wise_hparams(n_iter=2)
    result = run_trial(tiny_llama(seed=0), [record], hparams, TrialPlan(scorings=("tf",), edit_path="plain"), seed=WISE_SEED)
    naive = NaiveWise(hparams)
    assert [e.final_loss for e in result.edits] == [naive.edit(record)[-1]]
