"""Threshold curves (issue 12): one trial's gate rows give its tf metrics at every threshold,
bit for bit what a trial run at that threshold reports; its threshold grid gives the
generation scorings at each grid threshold. Tiny real model, real ZsRE records, every
protocol, single and packed trials."""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass

import pytest
import torch

from defer_core import DeferEditor, DeferInputError, TrialPlan, run_trial, run_trials, tiny_llama
from defer_core.curve import edit_success_at, fires, in_dtype, tf_metrics_at
from defer_core.evaluation import Scorer, build_probes
from defer_core.results import GENERATION_SCORINGS, METRICS, PROTOCOLS, TrialResult, metric_key

from .conftest import tiny_hparams

SCORINGS = ("tf", "gen", "genctx")
MILESTONES = (1, 3)
BETWEEN = 0.25  # lies between the gates of the last milestone with these hparams (asserted)
GRID = (0.0, BETWEEN, 0.5, 1.0)
HPARAMS = tiny_hparams(layer=3, edit_lr=2e-1, n_iter=10, threshold=0.5)  # gates spread over about (0.15, 0.9)
SEED = 3
DTYPE = "float32"  # the tiny model's
TF_KEYS = [metric_key(metric, "tf") for metric in METRICS]
GEN_KEYS = [metric_key(metric, scoring) for scoring in GENERATION_SCORINGS for metric in METRICS]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs many small forwards: one thread is faster on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _float32_above(value: float) -> float:
    """The next float32 after a float32 value: the first threshold the row no longer reaches."""
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    return struct.unpack("<f", struct.pack("<I", bits + 1))[0]


def _plan(protocol: str, **changes) -> TrialPlan:
    return TrialPlan(protocol=protocol, milestones=MILESTONES, scorings=SCORINGS, **changes)


def _median_gate(result: TrialResult) -> float:
    gates = sorted({row.gate for row in result.milestones[-1].gates})
    return gates[len(gates) // 2]


def _thresholds(gate: float) -> tuple[float, ...]:
    return (0.0, BETWEEN, gate, math.nextafter(gate, math.inf), _float32_above(gate), 1.0)


def _tf(metrics: dict[str, float]) -> dict[str, float]:
    return {key: metrics[key] for key in TF_KEYS}


def _gen(metrics: dict[str, float]) -> dict[str, float]:
    return {key: metrics[key] for key in GEN_KEYS}


def _assert_thresholds_split_rows(result: TrialResult, gate: float) -> None:
    """The test is not trivially all-on or all-off: at the chosen thresholds some rows of the
    last milestone fire and some do not, and `on` differs from `off` on both sides."""
    rows = result.milestones[-1].gates
    for threshold in (BETWEEN, gate):
        firing = [row for row in rows if fires(row.gate, threshold, DTYPE)]
        idle = [row for row in rows if not fires(row.gate, threshold, DTYPE)]
        assert firing and idle, f"threshold {threshold} must split the rows"
        assert any(r.on != r.off for r in firing) and any(r.on != r.off for r in idle)
    exact = [row for row in rows if row.gate == gate]
    assert exact and all(fires(row.gate, math.nextafter(gate, math.inf), DTYPE) for row in exact), ">= in float32: still fires"
    assert not any(fires(row.gate, _float32_above(gate), DTYPE) for row in exact)


@dataclass
class Single:
    """One protocol's unpacked trials: `probe` at threshold 0.5 with the grid, `curve` the same
    trial without scoring at its threshold, and a full run at each threshold."""

    protocol: str
    gate: float
    probe: TrialResult
    curve: TrialResult
    full: dict[float, TrialResult]


@pytest.fixture(scope="module", params=PROTOCOLS)
def single(request, zsre_records) -> Single:
    protocol, records = request.param, zsre_records[:3]
    probe = run_trial(tiny_llama(seed=0), records, HPARAMS, _plan(protocol, threshold_grid=GRID), seed=SEED)
    gate = _median_gate(probe)
    curve = run_trial(tiny_llama(seed=0), records, HPARAMS, _plan(protocol, threshold_grid=GRID, threshold_scores=False), seed=SEED)
    full = {t: run_trial(tiny_llama(seed=0), records, HPARAMS.replace(threshold=t), _plan(protocol), seed=SEED) for t in _thresholds(gate)}
    full[0.5] = probe
    return Single(protocol, gate, probe, curve, full)


def test_tf_curve_equals_a_full_evaluation_at_every_threshold(single):
    _assert_thresholds_split_rows(single.curve, single.gate)
    for threshold, run in single.full.items():
        assert [(m.protocol, m.n_edits) for m in run.milestones] == [(m.protocol, m.n_edits) for m in single.curve.milestones]
        for at_threshold, milestone in zip(run.milestones, single.curve.milestones):
            assert tf_metrics_at(milestone.gates, threshold, DTYPE) == _tf(at_threshold.metrics), (threshold, milestone.n_edits)
    last = [tf_metrics_at(single.curve.milestones[-1].gates, t, DTYPE) for t in (0.0, BETWEEN, single.gate, _float32_above(single.gate), 1.0)]
    assert len({tuple(m.values()) for m in last}) >= 3, "the curve must move across these thresholds"


def test_gate_rows_cover_every_record_and_probe(single):
    for milestone in single.curve.milestones:
        chunked = single.protocol == "chunks"
        n_records = len(milestone.gates) // len(METRICS)
        assert [(row.probe, row.chunk) for row in milestone.gates] == [
            (probe, index // milestone.n_edits if chunked else 0) for index in range(n_records) for probe in METRICS
        ]
        assert n_records == (3 if chunked else milestone.n_edits)
        assert all(row.off == 1.0 for row in milestone.gates if row.probe == "loc")


def test_edit_success_is_read_at_any_threshold(single):
    edits = [(e.index, e.gate, e.success_on, e.success_off) for e in single.curve.edits]
    assert all(gate is not None for _, gate, _, _ in edits)
    for threshold, run in single.full.items():
        assert [(e.index, e.gate, e.success_on, e.success_off) for e in run.edits] == edits
        assert [e.success for e in run.edits] == [edit_success_at(e.gate, e.success_on, e.success_off, threshold, DTYPE) for e in single.curve.edits]
    assert [e.success for e in single.full[0.0].edits] != [e.success for e in single.full[1.0].edits]


def test_grid_equals_a_full_generation_evaluation_at_each_grid_threshold(single):
    for index, milestone in enumerate(single.curve.milestones):
        assert [point.threshold for point in milestone.grid] == list(GRID)
        for point in milestone.grid:
            at_threshold = single.full[point.threshold].milestones[index]
            assert point.metrics == _gen(at_threshold.metrics), (point.threshold, milestone.n_edits)
    last = single.curve.milestones[-1].grid
    assert last[0].metrics != last[-1].metrics, "the grid must move between threshold 0 and 1"


def test_without_threshold_scores_only_gates_and_grid_are_computed(single):
    for curve, probe in zip(single.curve.milestones, single.probe.milestones):
        assert curve.metrics == {} and curve.records == ()
        assert probe.metrics and probe.records
        assert curve.gates == probe.gates
        assert curve.grid == probe.grid
    assert [(e.gate, e.success_on, e.success_off, e.success) for e in single.curve.edits] == [
        (e.gate, e.success_on, e.success_off, e.success) for e in single.probe.edits
    ], "the edit's success at the adaptor's threshold comes from its gate row"


@pytest.fixture(scope="module", params=PROTOCOLS)
def packed(request, zsre_records) -> tuple[TrialResult, list[TrialResult], list[TrialResult], tuple[float, ...]]:
    """Members that differ only in threshold: first at the grid thresholds with the grid, then
    at thresholds read off the first pack's gates."""
    protocol, records = request.param, zsre_records[:3]
    on_grid = run_trials(
        tiny_llama(seed=0), records, [HPARAMS.replace(threshold=t) for t in GRID], _plan(protocol, threshold_grid=GRID), seeds=[SEED] * len(GRID)
    )
    gate = _median_gate(on_grid[0])
    thresholds = _thresholds(gate)
    at_gates = run_trials(tiny_llama(seed=0), records, [HPARAMS.replace(threshold=t) for t in thresholds], _plan(protocol), seeds=[SEED] * len(thresholds))
    _assert_thresholds_split_rows(on_grid[0], gate)
    return on_grid[0], on_grid, at_gates, thresholds


def test_packed_members_equal_the_curve_at_their_threshold(packed):
    reference, on_grid, at_gates, thresholds = packed
    for members, member_thresholds in ((on_grid, GRID), (at_gates, thresholds)):
        for member, threshold in zip(members, member_thresholds):
            assert [m.gates for m in member.milestones] == [m.gates for m in reference.milestones], "one training, one curve"
            for milestone, curve in zip(member.milestones, reference.milestones):
                assert _tf(milestone.metrics) == tf_metrics_at(curve.gates, threshold, DTYPE), (threshold, milestone.n_edits)
            assert [e.success for e in member.edits] == [edit_success_at(e.gate, e.success_on, e.success_off, threshold, DTYPE) for e in reference.edits]


def test_packed_grid_equals_the_member_run_at_each_grid_threshold(packed):
    _, on_grid, _, _ = packed
    for member in on_grid:
        for index, milestone in enumerate(member.milestones):
            assert [point.threshold for point in milestone.grid] == list(GRID)
            for point, at_threshold in zip(milestone.grid, on_grid):
                assert point.metrics == _gen(at_threshold.milestones[index].metrics)


def test_grid_generation_with_and_without_the_shared_prefix_equals_one_pass_per_threshold(zsre_records):
    """The batched grid (rows repeated per threshold, finished rows dropped with their
    threshold) and the fallback (one pass per threshold) give `predict_scorings` at each threshold."""
    loaded = tiny_llama(seed=0)
    probes = [build_probes(loaded, record) for record in zsre_records[:4]]
    editor = DeferEditor(loaded, HPARAMS, seed=SEED)
    for probe in probes[:3]:
        editor.edit(probe.edit)
    rows = {s: [p.probe(s, kind) for kind in METRICS for p in probes] for s in ("gen", "genctx")}
    thresholds = (0.0, 0.3, 0.45, 1.0)
    expected = []
    for threshold in thresholds:
        with editor.adaptor.at_threshold(threshold):
            expected.append(Scorer(loaded, batch_size=5).predict_scorings(editor.adaptor, rows))
    assert expected[0] != expected[-1]
    for reuse_prefix in (True, False):
        assert Scorer(loaded, batch_size=9, reuse_prefix=reuse_prefix).predict_generated_at(editor.adaptor, rows, thresholds) == expected
    editor.detach()


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_in_dtype_agrees_with_torch_comparisons(name, dtype):
    """A gate compared with a Python threshold, and with a float32 per-row threshold tensor
    (how the adaptor compares a grid row), fires exactly where defer_core.curve says."""
    generator = torch.Generator().manual_seed(7)
    gates = torch.rand(400, generator=generator).to(dtype)
    rng = random.Random(7)
    checked = 0
    for gate in gates:
        value = float(gate)
        for threshold in (value, math.nextafter(value, 2.0), math.nextafter(value, -1.0), value * (1 + 1e-3), value * (1 - 1e-3),
                          value + 2e-8, value - 2e-8, rng.random()):
            scalar = bool(gate >= threshold)
            per_row = bool(gate >= torch.tensor(threshold, dtype=torch.float32).to(dtype))
            assert scalar == per_row == fires(value, threshold, name) == (value >= in_dtype(threshold, name)), (name, value, threshold)
            checked += scalar
    assert 0 < checked < 400 * 8


@pytest.mark.parametrize("grid, message", [((0.5, 0.5), "distinct"), ((1.5,), r"\[0, 1\]"), ((True,), "numbers"), ((math.nan,), "numbers")])
def test_bad_threshold_grids_are_rejected(grid, message):
    with pytest.raises(DeferInputError, match=f"threshold_grid.*{message}"):
        TrialPlan(threshold_grid=grid)


def test_an_unedited_cache_without_rel_and_gen_predictions_is_completed(tmp_path, zsre_records):
    """Caches written before gate rows hold only locality predictions: they still serve, and
    gain the unedited tf rel/gen predictions."""
    records, plan = zsre_records[:2], TrialPlan(milestones=(2,), scorings=("tf",))
    models = [tiny_llama(seed=0), tiny_llama(seed=0)]  # both alive: the in-process cache is keyed by the model object
    first = run_trial(models[0], records, HPARAMS, plan, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("unedited-*.json")
    stored = json.loads(cache_file.read_text())
    assert set(stored) == {"tf", "tf_rel", "tf_gen"}
    cache_file.write_text(json.dumps({"tf": stored["tf"]}))
    again = run_trial(models[1], records, HPARAMS, plan, cache_dir=tmp_path)
    assert json.loads(cache_file.read_text()) == stored
    assert again.milestones[0].gates == first.milestones[0].gates
    assert again.milestones[0].metrics == first.milestones[0].metrics


def test_grid_rows_keep_their_own_threshold_when_rows_finish_early(zsre_records):
    """A row that emits EOS leaves the batch alone (its prompt's other thresholds go on): the
    rows behind it must keep their thresholds."""
    from defer_core.prefix_generation import frozen_layer_count, generate_at_thresholds, generate_reusing_prefix

    loaded = tiny_llama(seed=0)
    editor = DeferEditor(loaded, HPARAMS, seed=SEED)
    probes = [build_probes(loaded, record) for record in zsre_records[:4]]
    for probe in probes[:3]:
        editor.edit(probe.edit)
    model, adaptor, pad = loaded.model, editor.adaptor, int(loaded.tokenizer.pad_token_id)
    frozen = frozen_layer_count(model, adaptor)
    prompts = [p.gen_rel.prompt_ids for p in probes] + [p.gen_loc.prompt_ids for p in probes]
    budgets = [6] * len(prompts)
    thresholds = (0.0, 0.45, 1.0)

    def one_threshold_at_a_time(eos: frozenset[int]) -> list[list[list[int]]]:
        per_threshold = []
        for threshold in thresholds:
            with adaptor.at_threshold(threshold):
                per_threshold.append(generate_reusing_prefix(model, adaptor, frozen, prompts, budgets, pad, eos))
        return [list(column) for column in zip(*per_threshold)]

    free = one_threshold_at_a_time(frozenset())
    # an EOS id that ends the always-on row of a prompt early while its never-on row goes on
    eos = next(frozenset({rows[0][len(prompt) + 1]}) for rows, prompt in zip(free, prompts) if rows[0][len(prompt) + 1] not in rows[-1])
    expected = one_threshold_at_a_time(eos)
    assert any(len(rows[0]) < len(rows[-1]) for rows in expected), "some rows must finish before others"
    assert generate_at_thresholds(model, adaptor, frozen, prompts, budgets, thresholds, pad, eos) == expected
    editor.detach()
