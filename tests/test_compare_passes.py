"""`compare` keeps each finished pass in OUT/passes and, run again with the same output, reads
the passes whose settings match instead of running them; the table and the per-record rows
equal those of one uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from defer_core.errors import DeferInputError
from defer_core.grace_hparams import load_grace_hparams
from orchestrator.compare import ComparePlan, render, run_comparison
from orchestrator.compare_passes import PASSES_DIR

from .conftest import tiny_hparams

ROOT = Path(__file__).resolve().parent.parent
T = (1, 2)
DEFER = tiny_hparams(edit_lr=5e-2, n_iter=3, threshold=0.3)
GRACE = load_grace_hparams(ROOT / "hparams" / "GRACE" / "llama-7b.yaml").replace(inner_params=("model.layers[2].mlp.down_proj.weight",), n_iter=3, eps=20.0)


def _plan(orders: int, defer=DEFER, grace_key: str = "sticky") -> ComparePlan:
    return ComparePlan(hparams=(defer, GRACE), model="tiny-llama", milestones=T, protocols=("stream", "immediate"), scorings=("tf", "genctx"),
                       dtypes=("float32",), orders=orders, error_bars=orders > 1, grace_key=grace_key)


def _run(plan: ComparePlan, records, out: Path | None):
    """The comparison and the labels of the passes it ran (not read)."""
    lines: list[str] = []
    result = run_comparison(plan, records, on_progress=lines.append, passes_from=out)
    ran = [line.split(":")[0] for line in lines if " edits x " in line]
    read = [line.split(":")[0] for line in lines if "finished before" in line]
    return result, ran, read


def _same(a, b) -> None:
    assert a.records == b.records
    assert a.cells == b.cells
    for fmt in ("md", "csv", "json"):
        assert render(a, fmt).replace(f'"seconds": {a.seconds}', "") == render(b, fmt).replace(f'"seconds": {b.seconds}', "")


@pytest.fixture(scope="module")
def uninterrupted(zsre_records):
    """Two edit orders in one run, keeping nothing."""
    result, ran, read = _run(_plan(orders=2), zsre_records, None)
    assert len(ran) == 6 and not read  # DEFER's shared stream and GRACE's two protocols, in two orders
    return result


def test_more_orders_later_read_the_first_runs_passes_and_equal_one_run(zsre_records, tmp_path, uninterrupted):
    out = tmp_path / "cmp"
    first, ran, read = _run(_plan(orders=1), zsre_records, out)
    assert ran == ["defer float32 stream+immediate", "grace float32 stream", "grace float32 immediate"] and not read
    assert len(list((out / PASSES_DIR).glob("*.parquet"))) == 3
    more, ran, read = _run(_plan(orders=2), zsre_records, out)
    assert read == ["defer float32 stream+immediate order 0", "grace float32 stream order 0", "grace float32 immediate order 0"]
    assert ran == ["defer float32 stream+immediate order 1", "grace float32 stream order 1", "grace float32 immediate order 1"]
    assert more.reused_passes == 3
    _same(more, uninterrupted)
    again, ran, read = _run(_plan(orders=2), zsre_records, out)
    assert not ran and len(read) == 6
    _same(again, uninterrupted)


def test_a_pass_stopped_midway_runs_again_and_other_settings_do_not_read_it(zsre_records, tmp_path, uninterrupted):
    out = tmp_path / "cmp"
    _run(_plan(orders=2), zsre_records, out)
    stopped = next((out / PASSES_DIR).glob("grace-float32-stream-order1-*.parquet"))
    stopped.unlink()  # as if the run had been killed during that pass: it left no file
    resumed, ran, read = _run(_plan(orders=2), zsre_records, out)
    assert ran == ["grace float32 stream order 1"] and len(read) == 5 and stopped.is_file()
    _same(resumed, uninterrupted)
    other, ran, read = _run(_plan(orders=2, defer=DEFER.replace(edit_lr=1e-2)), zsre_records, out)
    assert ran == ["defer float32 stream+immediate order 0", "defer float32 stream+immediate order 1"], "another edit_lr is another pass"
    assert read == [label for label in _labels(2) if label.startswith("grace")]
    assert other.cells[("grace", "stream", "tf", "float32")] == uninterrupted.cells[("grace", "stream", "tf", "float32")]
    keyed, ran, read = _run(_plan(orders=2, grace_key="prompt"), zsre_records, out)
    assert ran == [label for label in _labels(2) if label.startswith("grace")], "GRACE keyed at each prompt is another pass"
    assert read == [label for label in _labels(2) if label.startswith("defer")], "DEFER has no key position: its passes are read"
    assert {r["grace_key"] for r in keyed.records} == {"prompt", None} and all(r["grace_key"] is None for r in keyed.records if r["editor"] == "defer")
    assert "keyed at each scored prompt (grace_key prompt)" in render(keyed, "md") and '"grace_key": "prompt"' in render(keyed, "json")
    with pytest.raises(DeferInputError, match="grace_key: prompt is where GRACE reads its key, and no configuration is GRACE's"):
        ComparePlan(hparams=DEFER, model="tiny-llama", milestones=T, protocols=("stream",), scorings=("tf",), dtypes=("float32",), grace_key="prompt")


def _labels(orders: int) -> list[str]:
    return [f"{e} float32 {p} order {o}" for e, ps in (("defer", ("stream+immediate",)), ("grace", ("stream", "immediate")))
            for p in ps for o in range(orders)]


def test_a_damaged_or_misnamed_pass_file_is_refused_naming_it(zsre_records, tmp_path):
    out = tmp_path / "cmp"
    _run(_plan(orders=2), zsre_records, out)
    order0, order1 = (next((out / PASSES_DIR).glob(f"grace-float32-immediate-order{k}-*.parquet")) for k in (0, 1))
    order1.write_bytes(order0.read_bytes())  # order 0's rows under order 1's name
    with pytest.raises(DeferInputError, match=rf"^{order1}: holds a pass of other settings than its name says; remove it"):
        _run(_plan(orders=2), zsre_records, out)
    order1.write_bytes(b"not parquet")
    with pytest.raises(DeferInputError, match=rf"^{order1}: cannot read this finished pass .*; remove it to run the pass again$"):
        _run(_plan(orders=2), zsre_records, out)


def test_command_says_how_many_passes_it_read_and_prints_the_same_table(tmp_path):
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(yaml.safe_dump(DEFER.to_easyedit_dict()))
    out = tmp_path / "cmp"
    args = [sys.executable, "-m", "orchestrator.cli", "compare", str(hparams), "--T", "1,2", "--model", "tiny-llama", "--protocols", "stream",
            "--scorings", "tf", "--orders", "2", "--output", str(out)]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "finished before" not in first.stderr
    assert f"; 2 pass(es) read from {out / PASSES_DIR}, finished before)" in again.stderr and ": edit " not in again.stderr
    assert again.stdout == first.stdout
