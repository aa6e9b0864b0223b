"""A model's structure (iclscope.model.blocks, iclscope.model.structure): the head applied to the
last block's output gives the model's own logits on every kind of architecture, and the read-out
side stays out of the code digest of the stages that do not read out."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from iclscope.core import jobs
from iclscope.model import structure
from iclscope.model.blocks import decoder_layers, transformer_blocks
from iclscope.model.capture import residual_stream
from tiny_models import tiny_config

SCRIPTS = jobs.PACKAGE_DIR.parent / "scripts"

# final norms by several names and places (model.norm, transformer.ln_f, decoder.final_layer_norm next
# to OPT's project_out, Bloom's embedding norm beside ln_f) and every logit modifier a head applies
ARCHS = {
    "gpt2": {},
    "llama": {},
    "gemma2": {"final_logit_softcapping": 0.05},  # tight enough that a missed cap shows
    "opt": {"word_embed_proj_dim": 16},  # project_in / project_out around the blocks
    "bloom": {},
    "cohere": {"logit_scale": 0.5},
    "granite": {"logits_scaling": 4.0},
    "mixtral": {},  # a list of experts inside each block
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_head_of_the_last_block_output_is_the_models_logits(arch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **ARCHS[arch])).eval()
    ids = torch.tensor([[5, 17, 33, 8, 21, 40], [7, 7, 9, 40, 2, 11]])
    with torch.no_grad():
        out, states = residual_stream(model, input_ids=ids)
        logits = structure.head(model, states[-1])
        torch.testing.assert_close(logits, out.logits, rtol=1e-6, atol=1e-6)
        # the last state is the block's output, before the final norm
        assert not torch.allclose(structure.final_norm(model)(states[-1]), states[-1], atol=1e-3)
    name, blocks = transformer_blocks(model)
    assert blocks is decoder_layers(model) and len(blocks) == model.config.num_hidden_layers
    assert model.get_submodule(name) is blocks
    assert structure.final_norm(model) not in list(blocks.modules())


def test_a_model_without_one_final_norm_is_refused():
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.model.extra_norm = type(model.model.norm)(8)
    with pytest.raises(ValueError, match="cannot tell the final norm.*'norm', 'extra_norm'"):
        structure.final_norm(model)


def test_extraction_runs_the_blocks_but_not_the_read_out_structure():
    """Adding a read-out (or an architecture's spelling of a final norm) reruns no extraction:
    structure.py is in no model stage's code digest that does not import it."""
    for script in ("extract", "token_states", "saliency", "icicl", "tsft", "layer_lora"):
        modules = jobs.package_modules(SCRIPTS / f"{script}.py")
        assert {"model.capture", "model.blocks", "model.attention.eager"} <= set(modules), script
        assert "model.structure" not in modules, script
    extract = jobs.package_modules(SCRIPTS / "extract.py")
    assert {"model.attention.interface", "model.attention.adapters"} <= set(extract)  # through load_model
