"""The hook layer: residual patches and attention edits behave as documented."""

import pytest
import torch

from iclscope.model.capture import ATTN_IMPLEMENTATION, Positions, Recorder, ResidualPatch, left_pad, recording
from iclscope.model.loading import load_model


@pytest.fixture(scope="module")
def model(prepared_tiny):
    net, tok, manifest = load_model(prepared_tiny[1], attn_implementation=ATTN_IMPLEMENTATION)
    return net, tok, manifest


def run(net, ids, rec=None):
    ids_t, mask, pos = left_pad(ids, 0, "cpu")
    rec = rec or Recorder(
        net.config.num_hidden_layers,
        Positions(torch.zeros(len(ids), 0, dtype=torch.long), torch.zeros(len(ids), 2, dtype=torch.long)),
        (),
    )
    with torch.no_grad(), recording(net, rec):
        out = net(input_ids=ids_t, attention_mask=mask, position_ids=pos)
    return out.logits[:, -1], rec


def empty_positions(b):
    return Positions(torch.zeros(b, 0, dtype=torch.long), torch.zeros(b, 2, dtype=torch.long))


def test_patching_the_query_with_its_own_state_is_a_no_op(model):
    net, _, manifest = model
    ids = [[5, 17, 33, 8, 21, 40]]
    L = manifest["n_layers"]
    base, rec = run(net, ids, Recorder(L, empty_positions(1), ("query",)))
    for layer in range(L):
        own = rec.resid["query"][:, layer][:, None]  # [1, 1, d]
        patch = ResidualPatch(layer, torch.tensor([[5]]), own)
        patched, _ = run(net, ids, Recorder(L, empty_positions(1), (), patches=(patch,)))
        torch.testing.assert_close(patched, base, rtol=1e-5, atol=1e-5)


def test_patching_a_position_with_another_prompts_state_transplants_it(model):
    net, _, manifest = model
    a, b = [[5, 17, 33, 8, 21, 40]], [[5, 17, 12, 8, 21, 40]]  # differ at position 2
    L = manifest["n_layers"]
    logits_b, rec_b = run(
        net, b, Recorder(L, Positions(torch.tensor([[2]]), torch.zeros(1, 2, dtype=torch.long)), ("label",))
    )
    state = rec_b.resid["label"][:, :, 0]  # input of block 0 at position 2, [1, 1, d]
    patch = ResidualPatch(0, torch.tensor([[2]]), state)
    logits_a_patched, _ = run(net, a, Recorder(L, empty_positions(1), (), patches=(patch,)))
    torch.testing.assert_close(logits_a_patched, logits_b, rtol=1e-5, atol=1e-5)
    add_zero = ResidualPatch(1, torch.tensor([[3, -1]]), torch.zeros(1, 2, manifest["d_model"]), mode="add")
    logits_a, _ = run(net, a)
    torch.testing.assert_close(run(net, a, Recorder(L, empty_positions(1), (), patches=(add_zero,)))[0], logits_a)


def test_identity_attention_edit_equals_sdpa(model):
    net, _, manifest = model
    ids = [[5, 17, 33, 8, 21, 40], [7, 7, 9, 40]]
    base, _ = run(net, ids)
    edited, _ = run(net, ids, Recorder(manifest["n_layers"], empty_positions(2), (), edit=lambda layer, w: w))
    torch.testing.assert_close(edited, base, rtol=1e-5, atol=1e-5)


def test_attention_edit_changes_the_output(model):
    net, _, manifest = model
    ids = [[5, 17, 33, 8, 21, 40]]

    def only_self(layer, w):  # every row attends to itself only
        eye = torch.eye(w.shape[-1], dtype=w.dtype)[None, None, -w.shape[-2] :]
        return eye.expand_as(w)

    base, _ = run(net, ids)
    edited, _ = run(net, ids, Recorder(manifest["n_layers"], empty_positions(1), (), edit=only_self))
    assert not torch.allclose(edited, base, atol=1e-4)
    # with self-attention only, the last position's output ignores every other token
    other, _ = run(net, [[9, 9, 9, 9, 9, 40]], Recorder(manifest["n_layers"], empty_positions(1), (), edit=only_self))
    if net.config.model_type == "llama":  # GPT-2 adds absolute position embeddings, same here too
        torch.testing.assert_close(edited, other, rtol=1e-5, atol=1e-5)


def test_residual_stream_leaves_the_output_alone(model):
    """Its hook on the last block returns None: a returned value would replace the block's output
    (GPT-J, Falcon: tuple outputs, whose first row then became the whole batch)."""
    from iclscope.model.capture import residual_stream

    net, _, manifest = model
    ids, mask, pos = left_pad([[5, 17, 33, 8, 21, 40], [7, 7, 9, 40]], 0, "cpu")
    with torch.no_grad():
        plain = net(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        out, states = residual_stream(net, input_ids=ids, attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(out.logits, plain)
    assert len(states) == manifest["n_layers"] + 1 and all(s.shape[:2] == ids.shape for s in states)


def test_interface_models_need_no_adapter(model):
    from iclscope.model.attention.adapters import install_adapters

    net, _, _ = model
    assert install_adapters(net) == 0


def test_an_edit_that_never_reaches_attention_raises(prepared_tiny):
    """A model loaded without the iclscope attention must not silently ignore edits or reads."""
    net, _, manifest = load_model(prepared_tiny[1], attn_implementation="eager")
    rec = Recorder(manifest["n_layers"], empty_positions(1), (), edit=lambda layer, w: w * 0)
    with pytest.raises(RuntimeError, match=r"did not reach iclscope's hook layer.*attn_implementation='iclscope'"):
        run(net, [[5, 17, 33, 8]], rec)
    run(net, [[5, 17, 33, 8]], Recorder(manifest["n_layers"], empty_positions(1), ("query",)))  # resid only: fine
