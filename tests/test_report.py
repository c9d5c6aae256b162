"""`defer-sweep report` on a real sweep: a tiny-llama sweep run with `defer-sweep run` (real
Ray, Optuna RDB storage, MLflow SQLite store), then the report's PNGs read back, the HTML page
rendered in headless Chromium, and the MLflow store served by a real `mlflow server` and read
through its REST API."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from PIL import Image

from orchestrator import report as report_module
from orchestrator.cli import main
from orchestrator.report import HTML_NAME, MIN_IMPORTANCE_TRIALS, REPORT_DIR, param_importances, write_report
from orchestrator.report import importance as importance_module
from orchestrator.report.data import load_sweep
from orchestrator.report.html import render_html
from orchestrator.report.importance import Importance
from orchestrator.sinks.layout import require_sweep_dir
from orchestrator.spec import Objective

from .orchestrator_support import mlflow_runs, parquet_rows, state, tiny_spec
from .report_browser import dump_dom, mlflow_server, screenshot

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5, "threshold": 0.5}
BAD = {"layer": 2, "edit_lr": 1.0e-3, "n_iter": 2, "threshold": 0.7}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 1000, 600
# Writes what the browser decoded into the DOM, so --dump-dom shows it.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.setAttribute("data-natural-width", img.naturalWidth);
    img.setAttribute("data-natural-height", img.naturalHeight);
    img.setAttribute("data-complete", img.complete ? "yes" : "no");
  }
  document.body.setAttribute("data-rows", document.querySelectorAll("#top-trials tbody tr").length);
  document.body.setAttribute("data-rendered", "yes");
});
</script>"""


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-objective sweep (rel_tf, loc_tf; both scorings) of 8 trials, run with
    the real CLI in its own process, then its report written."""
    tmp = tmp_path_factory.mktemp("report-sweep")
    spec = tiny_spec(
        tmp,
        name="tiny-report",
        scorings=["tf", "gen"],
        objectives=[{"metric": "rel_tf", "direction": "maximize"}, {"metric": "loc_tf", "direction": "maximize"}],
        num_trials=8,
        initial_points=[GOOD, BAD],
    )
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(spec)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"defer-sweep run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = tmp / "tiny-report"
    write_report(out)
    return out


def report_dir(out: Path) -> Path:
    return out / REPORT_DIR


def png_size(payload: bytes) -> tuple[int, int]:
    assert payload[:8] == PNG_SIGNATURE, "not a PNG file"
    length, chunk = struct.unpack(">I4s", payload[8:16])
    assert chunk == b"IHDR" and length == 13
    return struct.unpack(">II", payload[16:24])


def completed(out: Path) -> list[dict[str, Any]]:
    return [t for t in parquet_rows(out, "trials") if t["status"] == "complete"]


def optuna_complete(out: Path) -> int:
    info = state(out)
    study = optuna.load_study(study_name=info["optuna_study_name"], storage=info["optuna_storage"])
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def expected_plots(out: Path) -> set[str]:
    names = {"pareto_tf.png", "pareto_gen.png", "curves_tf.png", "curves_gen.png", "bands_tf.png", "bands_gen.png", "params_rel_tf.png", "params_loc_tf.png"}
    if optuna_complete(out) >= MIN_IMPORTANCE_TRIALS:
        names.add("importance.png")
    return names


class _Page(HTMLParser):
    """<img> attributes, table rows (trial id, class, YAML text) and notes of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.body: dict[str, str] = {}
        self._pre: list[str] | None = None
        self._note: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values)
        elif tag == "body":
            self.body = values
        elif tag == "tr" and "data-trial-id" in values:
            self.rows.append({"trial_id": values["data-trial-id"], "class": values.get("class", ""), "yaml": ""})
        elif tag == "pre" and "yaml" in values.get("class", ""):
            self._pre = []
        elif tag == "p" and "note" in values.get("class", ""):
            self._note = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._pre is not None:
            self.rows[-1]["yaml"] = "".join(self._pre)
            self._pre = None
        elif tag == "p" and self._note is not None:
            self.notes.append("".join(self._note))
            self._note = None

    def handle_data(self, data: str) -> None:
        for sink in (self._pre, self._note):
            if sink is not None:
                sink.append(data)


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


# -- files ------------------------------------------------------------------------------------------


def test_pngs_are_real_images_of_the_fixed_size(sweep_out: Path) -> None:
    pngs = {p.name: p for p in report_dir(sweep_out).glob("*.png")}
    assert set(pngs) == expected_plots(sweep_out)
    for name, path in pngs.items():
        assert png_size(path.read_bytes()) == (WIDTH, HEIGHT), name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size == (WIDTH, HEIGHT) and image.format == "PNG"
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colors is not None and len(colors) > 50, f"{name} looks blank"
    assert not list(report_dir(sweep_out).glob(".*tmp*")), "temporary files left behind"


def test_html_is_self_contained_with_every_png_embedded(sweep_out: Path) -> None:
    text = (report_dir(sweep_out) / HTML_NAME).read_text(encoding="utf-8")
    page = parse(text)
    embedded = {}
    for image in page.images:
        assert image["src"].startswith("data:image/png;base64,"), "an image is not embedded"
        embedded[image["id"].removeprefix("img-") + ".png"] = base64.b64decode(image["src"].split(",", 1)[1])
    assert set(embedded) == expected_plots(sweep_out)
    for name, payload in embedded.items():
        assert payload == (report_dir(sweep_out) / name).read_bytes(), f"{name}: embedded image differs from the file"
    assert not re.search(r"""(?:src|href)=["'](?!data:)""", text), "the page references an external resource"


def test_report_is_logged_to_the_mlflow_parent_run(sweep_out: Path) -> None:
    parent, children, client = mlflow_runs(sweep_out)
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {HTML_NAME, *expected_plots(sweep_out)}
    assert all(not any(a.path.startswith("report") for a in client.list_artifacts(c.info.run_id)) for c in children)


def test_cli_report_prints_the_page_and_a_rerun_replaces_it(sweep_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in report_dir(sweep_out).iterdir())
    assert main(["report", str(sweep_out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {report_dir(sweep_out) / HTML_NAME}" in printed
    assert sorted(p.name for p in report_dir(sweep_out).iterdir()) == before


def test_report_of_a_directory_that_is_not_a_sweep_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep output directory" in capsys.readouterr().err


# -- the page in a browser ----------------------------------------------------------------------------


def test_page_renders_in_headless_chromium_with_plots_and_table(sweep_out: Path, tmp_path: Path) -> None:
    source = (report_dir(sweep_out) / HTML_NAME).read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(source.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    page = parse(dump_dom(probe, tmp_path / "profile"))

    assert page.body.get("data-rendered") == "yes", "the page's load event never ran"
    assert len(page.images) == len(expected_plots(sweep_out))
    for image in page.images:
        assert image.get("data-complete") == "yes", image.get("id")
        assert (image.get("data-natural-width"), image.get("data-natural-height")) == (str(WIDTH), str(HEIGHT)), image.get("id")

    done = completed(sweep_out)
    assert done, "the fixture sweep should complete some trials"
    assert len(done) <= report_module.TOP_TRIALS  # 8 trials: every completed one is listed
    assert int(page.body["data-rows"]) == len(page.rows) == len(done)
    assert {r["trial_id"] for r in page.rows} <= {t["trial_id"] for t in done}
    best = [r for r in page.rows if "best" in r["class"].split()]
    assert len(best) == 1
    best_yaml = (sweep_out / "best.yaml").read_text(encoding="utf-8")
    assert best[0]["yaml"] == best_yaml, "the best row's YAML is not what best.yaml holds"
    for row in page.rows:
        assert yaml.safe_load(row["yaml"])["alg_name"] == "DEFER"

    shot = screenshot(report_dir(sweep_out) / HTML_NAME, tmp_path / "page.png", tmp_path / "profile", 1100, 1800)
    with Image.open(shot) as image:
        assert image.size == (1100, 1800)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 200, "the screenshot looks blank"


def test_markup_in_trial_ids_and_error_text_is_escaped(sweep_out: Path) -> None:
    """A trial id, an error text and a note holding `<script>` and `&` show as text, never as
    markup: the top-trials row, the failed list and the notes all go through one escaping rule."""
    data = load_sweep(require_sweep_dir(sweep_out))
    done = [t for t in data.trials if t["status"] == "complete"]
    assert done, "the fixture sweep should complete some trials"
    evil = "x&y<script>alert(1)</script>"
    error = "boom <script>bad()</script> & more"
    # no Optuna number: the page labels these trials by their id
    data.trials.append(dict(done[0], trial_id=f"c-{evil}", optuna_trial=None))
    data.trials.append(dict(done[0], trial_id=f"f-{evil}", optuna_trial=None, status="failed", error=error))
    text = render_html(data, [], Importance(), [f"note {evil}"])

    assert "<script" not in text.lower()
    assert f"c-{evil}" not in text and f"f-{evil}" not in text and error not in text
    assert "c-x&amp;y&lt;script&gt;alert(1)&lt;/script&gt; <code>c-x&amp;y&lt;script&gt;alert(1)&lt;/script&gt;</code>" in text
    assert "f-x&amp;y&lt;script&gt;alert(1)&lt;/script&gt; <code>f-x&amp;y&lt;script&gt;alert(1)&lt;/script&gt;</code>" in text
    assert "boom &lt;script&gt;bad()&lt;/script&gt; &amp; more" in text
    page = parse(text)
    assert f"c-{evil}" in {r["trial_id"] for r in page.rows}  # the attribute decodes back to the id
    assert f"note {evil}" in page.notes


# -- importance with too few trials ----------------------------------------------------------------------


def test_too_few_trials_for_importance_is_a_note_not_an_error() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    for x in (0.1, 0.9):
        study.enqueue_trial({"edit_lr": x})
        study.optimize(lambda t: (t.suggest_float("edit_lr", 0.0, 1.0), 1.0 - t.params["edit_lr"]), n_trials=1)
    result = param_importances(study, [Objective("rel_tf", "maximize"), Objective("loc_tf", "maximize")], ["edit_lr"])
    assert result.values == {} and result.n_complete == 2
    assert any("Too few trials" in note for note in result.notes)


def test_both_evaluators_find_the_parameter_that_drives_each_objective() -> None:
    """A real two-objective study of 16 trials: rel depends on edit_lr only, loc on layer only.
    fANOVA and PED-ANOVA (enough trials for its top quantile) both rank the driver first."""
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        edit_lr = trial.suggest_float("edit_lr", 1e-4, 1e-1, log=True)
        layer = trial.suggest_int("layer", 1, 3)
        trial.suggest_float("threshold", 0.3, 0.7)
        return -abs(math.log10(edit_lr) + 2), 1.0 - 0.01 * layer

    study.optimize(objective, n_trials=16)
    result = param_importances(study, [Objective("rel_tf", "maximize"), Objective("loc_tf", "maximize")], ["layer", "edit_lr", "threshold"])
    assert result.notes == [] and result.n_complete == 16
    for metric, driver in (("rel_tf", "edit_lr"), ("loc_tf", "layer")):
        assert set(result.values[metric]) == {"fANOVA", "PED-ANOVA"}
        for values in result.values[metric].values():
            assert sum(values.values()) == pytest.approx(1.0)
            assert max(values, key=values.get) == driver


def test_page_says_so_when_importance_has_too_few_trials(sweep_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same sweep with a threshold above its trial count: no importance plot, a note, and
    every other plot still there (written to a copy, MLflow left alone)."""
    copy = tmp_path / "copy"
    shutil.copytree(sweep_out, copy, ignore=shutil.ignore_patterns("tune", "mlartifacts", REPORT_DIR))
    info = json.loads((copy / "sweep.json").read_text())
    info["optuna_storage"] = f"sqlite:///{copy / 'optuna.db'}"
    (copy / "sweep.json").write_text(json.dumps(info))
    monkeypatch.setattr(importance_module, "MIN_IMPORTANCE_TRIALS", 1000)  # where param_importances reads it
    page_path = write_report(copy, log_to_mlflow=False)
    page = parse(page_path.read_text(encoding="utf-8"))
    assert "img-importance" not in {i["id"] for i in page.images}
    assert len(page.images) == len(expected_plots(sweep_out) - {"importance.png"})
    assert any("Too few trials for hyperparameter importance" in n for n in page.notes)
    assert not (page_path.parent / "importance.png").exists()


# -- a real MLflow server ----------------------------------------------------------------------------


def _get(base: str, endpoint: str, **params: Any) -> dict[str, Any]:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _search(base: str, experiment_id: str, filter_string: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    token = None
    while True:
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}
        if token:
            body["page_token"] = token
        page = _post(base, "/api/2.0/mlflow/runs/search", body)
        runs.extend(page.get("runs", []))
        token = page.get("next_page_token")
        if not token:
            return runs


def test_mlflow_server_serves_the_sweep_and_its_nested_trials_over_rest(sweep_out: Path, tmp_path: Path) -> None:
    info = state(sweep_out)
    trials = {t["trial_id"]: t for t in parquet_rows(sweep_out, "trials")}
    milestones = parquet_rows(sweep_out, "milestones")
    with mlflow_server(info["mlflow_tracking_uri"], tmp_path / "server") as base:
        experiment = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=info["mlflow_experiment"])["experiment"]
        parents = _search(base, experiment["experiment_id"], f"tags.`defer_sweep.sweep_id` = '{info['sweep_id']}' and tags.`defer_sweep.role` = 'sweep'")
        assert len(parents) == 1
        parent = parents[0]
        parent_id = parent["info"]["run_id"]
        assert parent["info"]["status"] == "FINISHED"
        parent_params = {p["key"]: p["value"] for p in parent["data"]["params"]}
        assert parent_params["objectives"] == "maximize rel_tf,maximize loc_tf" and parent_params["T"] == "6"

        children = _search(base, experiment["experiment_id"], f"tags.mlflow.parentRunId = '{parent_id}'")
        by_trial = {}
        for child in children:
            tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
            assert tags["mlflow.parentRunId"] == parent_id and tags["defer_sweep.role"] == "trial"
            by_trial[tags["defer_sweep.trial_id"]] = (child, tags)
        assert set(by_trial) == set(trials), "one nested run per trial in the Parquet table"

        for trial_id, (child, tags) in by_trial.items():
            row = trials[trial_id]
            assert tags["status"] == row["status"]
            params = {p["key"]: p["value"] for p in child["data"]["params"]}
            assert int(params["layer"]) == row["layer"] and int(params["n_iter"]) == row["n_iter"]
            assert float(params["edit_lr"]) == pytest.approx(row["edit_lr"]) and float(params["threshold"]) == pytest.approx(row["threshold"])
            expected = sorted((m["n_edits"], m["rel_tf"], m["loc_gen"]) for m in milestones if m["trial_id"] == trial_id)
            rel = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=child["info"]["run_id"], metric_key="rel_tf")["metrics"]
            loc = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=child["info"]["run_id"], metric_key="loc_gen")["metrics"]
            assert [int(p["step"]) for p in sorted(rel, key=lambda p: int(p["step"]))] == [n for n, _, _ in expected]
            assert [p["value"] for p in sorted(rel, key=lambda p: int(p["step"]))] == pytest.approx([v for _, v, _ in expected])
            assert [p["value"] for p in sorted(loc, key=lambda p: int(p["step"]))] == pytest.approx([v for _, _, v in expected])

        listed = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=parent_id, path=REPORT_DIR)
        assert {Path(f["path"]).name for f in listed.get("files", [])} == {HTML_NAME, *expected_plots(sweep_out)}
