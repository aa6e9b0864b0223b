"""TS-FT trains with gradient checkpointing on the blocks (issue 30: its peak memory): on the tiny Llama and
GPT-2 models, one TS-FT step (label cross-entropy + space loss on the recorded layer-l* query state, LoRA
dropout on) gives the same loss and adapter gradients with and without checkpointing, and keeps less for
backward; the token-budget evaluation batches give the predictions of one prompt at a time."""

import numpy as np
import torch
import torch.nn.functional as F

from iclscope.methods.taskspace.tsft import evaluate_examples, forward_batch, space_loss
from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.loading import load_model
from iclscope.model.lora import attach_lora

LABELS = torch.as_tensor([21, 40])


def batch_of(n=5):
    rng = np.random.default_rng(0)
    return [
        {"input_ids": rng.integers(5, 200, size=int(rng.integers(6, 14))).tolist(), "gold": i % 2} for i in range(n)
    ]


def one_step(model_dir, spec, checkpoint: bool):
    base, tok, manifest = load_model(model_dir, spec, attn_implementation=ATTN_IMPLEMENTATION)
    torch.manual_seed(0)
    net = attach_lora(base, r=4, alpha=4, dropout=0.3, checkpoint_blocks=checkpoint)
    with torch.no_grad():  # non-zero B matrices, so the adapters change the forward pass
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    net.train()
    batch, L = batch_of(), manifest["n_layers"]
    d = base.config.hidden_size
    basis, mean, protos = torch.eye(d)[:1], torch.zeros(d), torch.tensor([[-1.0], [1.0]])
    saved = []
    torch.manual_seed(7)  # the dropout masks of the step
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logits, h = forward_batch(net, tok, batch, LABELS, L // 2, L)
        gold = torch.as_tensor([x["gold"] for x in batch])
        loss = F.cross_entropy(logits, gold) + 0.5 * space_loss(h, basis, mean, protos, gold, 0.1)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    return loss.item(), grads, sum(saved), net, tok, L


def test_checkpointed_step_equals_the_plain_step(prepared_tiny):
    spec, model_dir = prepared_tiny
    loss_plain, grads_plain, saved_plain, _, _, _ = one_step(model_dir, spec, checkpoint=False)
    loss_ckpt, grads_ckpt, saved_ckpt, net, tok, L = one_step(model_dir, spec, checkpoint=True)
    assert loss_ckpt == loss_plain or abs(loss_ckpt - loss_plain) < 1e-6
    assert grads_ckpt.keys() == grads_plain.keys() and any(g.abs().max() > 0 for g in grads_plain.values())
    worst = max(float((grads_ckpt[n] - grads_plain[n]).abs().max()) for n in grads_plain)
    assert worst < 1e-5, worst
    assert saved_ckpt < saved_plain / 2  # the blocks' activations are recomputed, not kept
    # evaluation (eval mode, inference mode) in token-budget batches = one prompt at a time
    net.eval()
    d = net.config.hidden_size
    space = (torch.eye(d)[:1], torch.zeros(d), torch.tensor([[-1.0], [1.0]]))
    examples = batch_of(9)
    with torch.inference_mode():
        together = evaluate_examples(net, tok, examples, LABELS, L // 2, L, space, 0.1, "distance", 4, 30)
        alone = [evaluate_examples(net, tok, [x], LABELS, L // 2, L, space, 0.1, "distance", 1) for x in examples]
    assert together["pred"].tolist() == [int(a["pred"][0]) for a in alone]
    np.testing.assert_allclose(together["ce"], np.mean([a["ce"] for a in alone]), rtol=1e-5)
    np.testing.assert_allclose(together["space"], np.mean([a["space"] for a in alone]), rtol=1e-5)


def test_a_step_in_length_sorted_parts_gives_the_gradients_of_one_pass(prepared_tiny):
    """Without checkpointing TS-FT runs a batch in parts of bounded padded tokens and accumulates their
    gradients (iclscope.methods.taskspace.tsft.accumulate_gradients): the batch's mean losses and the adapter
    gradients of one pass over the whole batch (dropout off: the parts draw their masks in another order)."""
    from iclscope.methods.taskspace.tsft import TSFTSettings, accumulate_gradients
    from iclscope.model.batching import token_batches

    spec, model_dir = prepared_tiny
    base, tok, manifest = load_model(model_dir, spec, attn_implementation=ATTN_IMPLEMENTATION)
    torch.manual_seed(0)
    net = attach_lora(base, r=4, alpha=4, dropout=0.0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    net.eval()  # no dropout anywhere (GPT-2's own too); the gradients flow all the same
    batch, L = batch_of(), manifest["n_layers"]
    d = base.config.hidden_size
    space = (torch.eye(d)[:1], torch.zeros(d), torch.tensor([[-1.0], [1.0]]))
    settings = TSFTSettings(lam=0.5, tau=0.1)
    gold = torch.as_tensor([x["gold"] for x in batch])
    logits, h = forward_batch(net, tok, batch, LABELS, L // 2, L)
    ce, sp = F.cross_entropy(logits, gold), space_loss(h, *space, gold, 0.1)
    (ce + 0.5 * sp).backward()
    whole = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad(set_to_none=True)
    assert len(token_batches(batch, len(batch), 26)) >= 3  # several parts, of one or two prompts
    ce_parts, sp_parts = accumulate_gradients(net, tok, batch, LABELS, L // 2, L, space, settings, 26)
    np.testing.assert_allclose([ce_parts, sp_parts], [ce.item(), sp.item()], rtol=1e-5)
    parts = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert any(g.abs().max() > 0 for g in whole.values())
    worst = max(float((parts[n] - whole[n]).abs().max()) for n in whole)
    assert worst < 1e-5, worst
