"""The real embedded SmolLM2-135M: converted once from the package's GGUF, edited with DEFER."""

import pytest

from defer_core import DeferHParams, TrialPlan, load_model, run_trial
from defer_core.models import embedded_model_dir

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", device="cpu")


def test_embedded_model_loads_from_the_safetensors_cache(smollm2):
    assert smollm2.num_layers == 30
    assert (embedded_model_dir() / "model.safetensors").is_file()
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    next_token = smollm2.model(**ids).logits[0, -1].argmax()
    assert smollm2.tokenizer.decode(next_token).strip() == "Paris"


def test_a_short_defer_stream_learns_the_edit(smollm2, zsre_records):
    hparams = DeferHParams(model_name="smollm2-135m", inner_params=("model.layers[27].mlp.down_proj.weight",),
                           edit_lr=1e-3, n_iter=15, threshold=0.5, device="cpu")
    result = run_trial(smollm2, zsre_records[:2], hparams, TrialPlan(milestones=(2,), scorings=("tf", "gen")), seed=0)
    first, second = result.edits
    assert first.final_loss < 2.0 and second.final_loss < 2.0
    assert result.milestones[0].metrics["rel_tf"] > 0.5
    assert smollm2.model.model.layers[27].mlp.down_proj.__class__.__name__ == "Linear"


def test_an_export_names_the_embedded_model_by_a_folder_easyedit_loads(smollm2, tmp_path):
    """(issue 20) EasyEdit's editor picks the model class from model_name, and the Hub name
    SmolLM2-135M names no family it knows: an export names the Hugging Face copy, whose folder
    says it is a Llama, and that folder loads with the Auto classes EasyEdit's llama branch uses."""
    from transformers import AutoConfig, AutoTokenizer

    from defer_core.hparams import easyedit_family
    from orchestrator.spec import load_spec
    from orchestrator.spec.trial_config import hparams_for

    from .orchestrator_support import tiny_spec

    spec = load_spec(tiny_spec(tmp_path, name="emb", model={"name": "smollm2-135m", "device": "cpu"},
                               search_space={"layer": 27, "module_template": "model.layers[{layer}].mlp.down_proj", "edit_lr": {"low": 1e-4, "high": 1e-2}, "threshold": 0.5, "n_iter": 5}, initial_points=[]))
    hparams = hparams_for(spec, {"layer": 27, "edit_lr": 1e-3, "n_iter": 5, "threshold": 0.5})
    assert hparams.model_name == str(embedded_model_dir()) and easyedit_family(hparams.model_name) == "llama"
    assert AutoConfig.from_pretrained(hparams.model_name, local_files_only=True).architectures == ["LlamaForCausalLM"]
    assert AutoTokenizer.from_pretrained(hparams.model_name, local_files_only=True)("Paris").input_ids
    assert hparams.device == 0
