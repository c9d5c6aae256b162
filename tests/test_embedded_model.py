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
