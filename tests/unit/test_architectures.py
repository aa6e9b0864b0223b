"""The support matrix: every architecture iclscope supports, on a tiny random model, read and
edited through the hook layer (iclscope.model.capture), against the unmodified model's own eager forward.

Per architecture (2 layers, d_model 32, vocab 400, a left-padded batch of two prompts):
* residual stream and label logits equal a plain eager forward;
* the recorded query rows (to the label columns) equal eager `output_attentions`;
* error diagnosis's q/k are recorded at the asked layer;
* isolation and re-weighting through the hook layer equal the model's own eager forward with its
  softmax hand-masked (isolated rows: every other column masked before the softmax) or
  hand-scaled (row q, label columns × e^β after the softmax);
* saliency gradients flow (ones multiplier, float32);
* a KV cache rebuilt as anchor KV builds it, continued with the rest of the prompt, gives the
  full prompt's logits.
Plus the refusals of iclscope.core.architectures and the dtype paths (float32 / bfloat16 / float16).
"""

from __future__ import annotations

import contextlib
import math

import pandas as pd
import pytest
import torch

from iclscope.core import architectures
from iclscope.core.config import ConfigError, ModelSpec
from iclscope.methods.anchors.isolation import isolation_edit
from iclscope.methods.anchors.reweighting import reweighted_label_logits, reweighting_edit
from iclscope.methods.anchors.saliency import saliency_matrices
from iclscope.model.capture import (
    ATTN_IMPLEMENTATION,
    Positions,
    Recorder,
    ResidualPatch,
    left_pad,
    recording,
    residual_stream,
)
from iclscope.model.loading import load_model
from iclscope.model.models import prepare_model
from tiny_models import TINY_CONFIGS, make_tiny_arch, train_tokenizer

ARCHS = list(TINY_CONFIGS)
PROMPTS = [[5, 17, 33, 8, 21, 40, 11, 90, 7, 3, 250, 61], [9, 44, 12, 8, 30, 77, 5, 19, 2]]
LABEL = torch.tensor([[2, 6, 9], [4, 7, -1]])  # padded coordinates (row 1 is left-padded by 3)
LABEL_IDS = [3, 7, 11, 250]
ATOL = 2e-5
MAX_DIFF: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer("gpt2", out)
    return out


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tokenizer_dir, tmp_path_factory):
    """(model_type, iclscope model, eager reference model, manifest) of one architecture."""
    model_type = request.param
    weights = make_tiny_arch(model_type, tmp_path_factory.mktemp(model_type), tokenizer_dir)
    spec = ModelSpec(name=f"tiny-{model_type}", source="local", path=str(weights))
    prepared = tmp_path_factory.mktemp(f"prepared-{model_type}")
    prepare_model(spec, prepared)
    ours, _, manifest = load_model(prepared, device="cpu", dtype="float32", attn_implementation=ATTN_IMPLEMENTATION)
    ref, _, _ = load_model(prepared, device="cpu", dtype="float32", attn_implementation="eager")
    return model_type, ours, ref, manifest, prepared


def note(model_type: str, check: str, a: torch.Tensor, b: torch.Tensor) -> float:
    diff = float((a.float() - b.float()).abs().nan_to_num(0.0).max())
    MAX_DIFF.setdefault(model_type, {})[check] = max(diff, MAX_DIFF.get(model_type, {}).get(check, 0.0))
    return diff


def batch(device="cpu"):
    return left_pad(PROMPTS, 0, device)


def forward(net, rec=None, **kw):
    ids, mask, pos = batch()
    ctx = recording(net, rec) if rec is not None else contextlib.nullcontext()
    with ctx:
        return net(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)


@contextlib.contextmanager
def softmax_hand_edit(pre=None, post=None):
    """Patch torch's softmax while an unmodified eager model runs on the PROMPTS batch: the n-th
    softmax over [B, H, Tq, Tk] (or [B·H, Tq, Tk], XGLM) is layer n's attention (MoE routers are
    2-D); pre(layer, scores) / post(layer, probs) change it by hand."""
    original = torch.nn.functional.softmax
    count = [0]

    def patched(input, dim=None, _stacklevel=3, dtype=None):
        if input.ndim not in (3, 4):
            return original(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)
        shape = input.shape
        input = input.reshape(len(PROMPTS), -1, *shape[-2:])
        layer = count[0]
        count[0] += 1
        if pre is not None:
            input = pre(layer, input)
        out = original(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)
        return (post(layer, out) if post is not None else out).reshape(shape)

    torch.nn.functional.softmax = patched
    try:
        yield count
    finally:
        torch.nn.functional.softmax = original


def label_rows(T: int) -> torch.Tensor:
    rows = torch.zeros(len(PROMPTS), T, dtype=torch.bool)
    for b in range(len(PROMPTS)):
        rows[b, LABEL[b][LABEL[b] >= 0]] = True
    return rows


# --------------------------------------------------------------------------- the matrix
def test_residuals_label_logits_and_attention_rows_equal_eager(arch):
    model_type, ours, ref, manifest, _ = arch
    L = manifest["n_layers"]
    positions = Positions(LABEL, torch.zeros(2, 2, dtype=torch.long))
    rec = Recorder(L, positions, ("query", "label"), read_attention=True, qk_layer=L - 1)
    with torch.no_grad():
        out = forward(ours, rec)
        ids, mask, pos = batch()
        ref_out, resid = residual_stream(
            ref, input_ids=ids, attention_mask=mask, position_ids=pos, output_attentions=True
        )
    # residual stream at the query and at the label tokens, every layer
    for i, h in enumerate(resid):
        assert note(model_type, "resid", rec.resid["query"][:, i], h[:, -1]) < ATOL * 10, i
        lab = torch.gather(h, 1, LABEL.clamp(min=0)[:, :, None].expand(-1, -1, h.shape[-1]))
        valid = LABEL >= 0
        assert note(model_type, "resid", rec.resid["label"][:, :, i][valid], lab[valid]) < ATOL * 10, i
    assert note(model_type, "label_logits", out.logits[:, -1, LABEL_IDS], ref_out.logits[:, -1, LABEL_IDS]) < ATOL * 10
    # attention of the query to the label columns = eager output_attentions
    assert rec.attn is not None and rec.attn.shape == (2, L, manifest["n_heads"], 3)
    for layer, probs in enumerate(ref_out.attentions):
        expected = torch.gather(probs[:, :, -1, :], 2, LABEL.clamp(min=0)[:, None, :].expand(-1, probs.shape[1], -1))
        got = rec.attn[:, layer]
        valid = (LABEL >= 0)[:, None, :].expand_as(got)
        assert not got[valid].isnan().any()
        assert got[~valid].isnan().all()
        assert note(model_type, "attn_rows", got[valid], expected[valid]) < ATOL, layer
    # error diagnosis's q/k: last query [B, H, dh], label keys [B, K, H, dh]
    q, k = rec.qk
    assert q.shape[:2] == (2, manifest["n_heads"]) and k.shape[:3] == (2, 3, manifest["n_heads"])
    assert q.dtype == torch.float32 and not q.isnan().any() and k[1, 2].isnan().all() and not k[0].isnan().any()


def test_isolation_equals_a_hand_masked_eager_forward(arch):
    model_type, ours, ref, manifest, _ = arch
    L = manifest["n_layers"]
    T = max(map(len, PROMPTS))
    rows = label_rows(T)
    for layers in ({0}, set(range(L))):
        rec = Recorder(
            L, Positions(LABEL[:, :0], torch.zeros(2, 2, dtype=torch.long)), (), edit=isolation_edit(layers, rows)
        )
        with torch.no_grad():
            got = forward(ours, rec).logits[:, -1]

        def pre(layer, scores, layers=layers):  # isolated rows: every column but their own masked
            if layer not in layers:
                return scores
            Tq, Tk = scores.shape[-2:]
            keep = torch.zeros(Tq, Tk, dtype=torch.bool)
            keep[torch.arange(Tq), torch.arange(Tq)] = True  # self column (a sink column, if any, is masked)
            masked = rows[:, None, :, None] & ~keep[None, None]
            return scores.masked_fill(masked, torch.finfo(scores.dtype).min)

        with torch.no_grad(), softmax_hand_edit(pre=pre) as calls:
            expected = forward(ref).logits[:, -1]
        assert calls[0] == L, f"{model_type}: {calls[0]} attention softmaxes for {L} layers"
        assert note(model_type, "isolation", got, expected) < ATOL * 10
        with torch.no_grad():
            plain = forward(ref).logits[:, -1]
        assert (got - plain).abs().max() > 1e-4  # the edit reaches the model


def test_reweighting_equals_a_hand_scaled_eager_forward(arch):
    model_type, ours, ref, manifest, _ = arch
    L, H = manifest["n_layers"], manifest["n_heads"]
    beta = torch.randn(L, H, 3, generator=torch.Generator().manual_seed(1))
    rec = Recorder(
        L, Positions(LABEL[:, :0], torch.zeros(2, 2, dtype=torch.long)), (), edit=reweighting_edit(beta, LABEL)
    )
    with torch.no_grad():
        got = forward(ours, rec).logits[:, -1]

    def post(layer, probs):  # row q, label columns × e^β, no renormalisation
        probs = probs.clone()
        for b in range(probs.shape[0]):
            for k, col in enumerate(LABEL[b].tolist()):
                if col >= 0:
                    probs[b, :, -1, col] = probs[b, :, -1, col] * torch.exp(beta[layer, :, k]).to(probs.dtype)
        return probs

    with torch.no_grad(), softmax_hand_edit(post=post):
        expected = forward(ref).logits[:, -1]
    assert note(model_type, "reweighting", got, expected) < ATOL * 10
    # differentiable in β (the fit) and the ones multiplier of saliency
    beta_g = torch.zeros(L, H, 3, requires_grad=True)
    rec = Recorder(
        L, Positions(LABEL[:, :0], torch.zeros(2, 2, dtype=torch.long)), (), edit=reweighting_edit(beta_g, LABEL)
    )
    forward(ours, rec).logits[:, -1, LABEL_IDS].float().logsumexp(-1).sum().backward()
    assert beta_g.grad is not None and beta_g.grad.abs().sum() > 0
    sal = saliency_matrices(ours, PROMPTS[0], 1, LABEL_IDS, L)
    assert sal.shape == (L, len(PROMPTS[0]), len(PROMPTS[0])) and sal.sum() > 0


def test_kv_continuation_equals_the_full_prompt(arch):
    """Anchor KV's mechanics: per-layer keys/values of a prefix copied into a fresh DynamicCache,
    the rest of the prompt continued at its positions, = the full prompt's last logits."""
    from transformers import DynamicCache

    model_type, ours, _, _, _ = arch
    ids = torch.tensor([PROMPTS[0]])
    cut = 7
    with torch.no_grad():
        full = ours(input_ids=ids, logits_to_keep=1).logits[0, -1]
        pre = ours(input_ids=ids[:, :cut], position_ids=torch.arange(cut)[None], use_cache=True)
        cache = DynamicCache(config=ours.config)
        for layer, kv in enumerate(pre.past_key_values.layers):
            cache.update(kv.keys.clone(), kv.values.clone(), layer)
        rest = ids[:, cut:]
        out = ours(
            input_ids=rest,
            position_ids=torch.arange(cut, ids.shape[1])[None],
            attention_mask=torch.ones(1, ids.shape[1], dtype=torch.long),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[0, -1]
    assert note(model_type, "kv_continuation", out, full) < ATOL * 10


@pytest.mark.parametrize(
    ("model_type", "drop"),
    [("gemma2", "softcap"), ("gpt_oss", "sinks"), ("bloom", "bias"), ("mistral", "mask"), ("gemma3_text", "mask")],
)
def test_the_matrix_catches_a_path_that_drops_a_score_modifier(model_type, drop, monkeypatch, tmp_path, tokenizer_dir):
    """Negative control: rows that ignore soft-capping, sinks, ALiBi or the sliding window (the mask
    of one unpadded prompt holds only the window) are far from eager, so the matrix would see it."""
    weights = make_tiny_arch(model_type, tmp_path / "w", tokenizer_dir)
    prepare_model(ModelSpec(name="m", source="local", path=str(weights)), tmp_path / "p")
    ours, _, manifest = load_model(
        tmp_path / "p", device="cpu", dtype="float32", attn_implementation=ATTN_IMPLEMENTATION
    )
    ref, _, _ = load_model(tmp_path / "p", device="cpu", dtype="float32", attn_implementation="eager")
    original = Recorder.take_query_row

    def dropping(self, layer, query, key, attention_mask, scaling, **modifiers):
        if drop == "mask":
            attention_mask = None
        else:
            modifiers[drop] = None
        return original(self, layer, query, key, attention_mask, scaling, **modifiers)

    monkeypatch.setattr(Recorder, "take_query_row", dropping)
    ids = torch.tensor([PROMPTS[0]])
    rec = Recorder(
        manifest["n_layers"], Positions(LABEL[:1], torch.zeros(1, 2, dtype=torch.long)), (), read_attention=True
    )
    with torch.no_grad(), recording(ours, rec):
        ours(input_ids=ids)
    with torch.no_grad():
        attentions = ref(input_ids=ids, output_attentions=True).attentions
    expected = torch.stack([a[:, :, -1, LABEL[0]] for a in attentions], dim=1)  # [1, L, H, K]
    assert (rec.attn - expected).abs().max() > 1e-3


def test_plain_load_and_error_diagnosis_reads(arch):
    """`load_model` with its default (SDPA, eager where the class has none or SDPA cannot soft-cap:
    token states) computes what eager does; error diagnosis's q/k come through the hook layer."""
    from iclscope.methods.anchors.error_diagnosis import query_and_label_keys

    model_type, ours, ref, manifest, prepared = arch
    plain, _, _ = load_model(prepared, device="cpu", dtype="float32")
    with torch.no_grad():
        ids, mask, pos = batch()
        out, states = residual_stream(plain, input_ids=ids, attention_mask=mask, position_ids=pos)
        ref_out, ref_states = residual_stream(ref, input_ids=ids, attention_mask=mask, position_ids=pos)
    assert note(model_type, "plain_load", out.logits[:, -1], ref_out.logits[:, -1]) < ATOL * 10
    assert note(model_type, "plain_load", states[-1][:, -1], ref_states[-1][:, -1]) < ATOL * 10
    frame = pd.DataFrame({"input_ids": PROMPTS, "label_pos": [[2, 6, 9], [1, 4]], "n_tokens": [12, 9]})
    q, k, _ = query_and_label_keys(ours, frame, manifest["n_layers"] - 1, manifest["n_layers"], 0)
    assert q.shape[0] == 2 and k.shape[:2] == (2, 3) and q.shape[1] == k.shape[2]
    assert not pd.isna(q).any() and pd.isna(k[1, 2]).all() and not pd.isna(k[0]).any()


# --------------------------------------------------------------------------- refusals
def test_the_table_names_what_is_refused_and_why():
    assert architectures.check_supported("LlamaForCausalLM").hook == "interface"
    assert architectures.check_supported("bloom").hook == "adapter"
    with pytest.raises(ConfigError, match=r"'MambaForCausalLM'.*no softmax attention.*verified.*LlamaForCausalLM"):
        architectures.check_supported("MambaForCausalLM")
    with pytest.raises(ConfigError, match=r"'FancyNewForCausalLM'.*not in iclscope's support table"):
        architectures.check_supported("FancyNewForCausalLM")
    with pytest.raises(ConfigError, match=r"ALiBi Falcon"):
        architectures.check_supported("FalconForCausalLM", {"alibi": True})
    architectures.check_supported("FalconForCausalLM", {"alibi": False})
    verified = {s.model_type for s in architectures.SUPPORT_TABLE if s.verified}
    assert verified == set(ARCHS)  # every verified row is in this matrix and vice versa
    table = architectures.markdown_table()
    assert "| MambaForCausalLM | mamba | refused |" in table and "| BloomForCausalLM | bloom | supported |" in table


def test_prepare_model_refuses_before_any_work(tmp_path, tokenizer_dir):
    weights = make_tiny_arch("falcon", tmp_path / "w", tokenizer_dir, alibi=True)
    spec = ModelSpec(name="rw", source="local", path=str(weights))
    with pytest.raises(ConfigError, match=r"model 'rw'.*'FalconForCausalLM'.*ALiBi"):
        prepare_model(spec, tmp_path / "prepared")
    assert not (tmp_path / "prepared" / "manifest.json").exists()


def test_architectures_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; import iclscope.core.architectures; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt_oss", "gptj", "falcon", "bloom"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_every_stage_path_runs_in_every_dtype_with_float32_softmax(model_type, dtype, tmp_path, tokenizer_dir):
    weights = make_tiny_arch(model_type, tmp_path / "w", tokenizer_dir)
    prepare_model(ModelSpec(name="m", source="local", path=str(weights)), tmp_path / "p")
    net, _, manifest = load_model(tmp_path / "p", device="cpu", dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)
    f32, _, _ = load_model(tmp_path / "p", device="cpu", dtype="float32", attn_implementation=ATTN_IMPLEMENTATION)
    assert next(net.parameters()).dtype == getattr(torch, dtype)
    L = manifest["n_layers"]
    seen = []

    def spy(layer, w):  # the edit sees float32 post-softmax weights whatever the model dtype
        seen.append(w.dtype)
        return w

    reads = {}
    for name, model in (("low", net), ("f32", f32)):
        rec = Recorder(
            L,
            Positions(LABEL, torch.tensor([[3, 8], [5, 9]])),
            ("query", "content_mean", "label"),
            read_attention=True,
            qk_layer=0,
            edit=spy if name == "low" else None,
        )
        with torch.no_grad():
            logits = forward(model, rec).logits[:, -1]
        reads[name] = rec, logits
    rec, logits = reads["low"]
    assert seen and set(seen) == {torch.float32}
    assert rec.attn.dtype == torch.float32 and rec.resid["query"].dtype == torch.float32
    assert rec.qk[0].dtype == torch.float32
    valid = (LABEL >= 0)[:, None, None, :].expand_as(rec.attn)
    assert torch.isfinite(rec.attn[valid]).all()
    tol = 0.0 if dtype == "float32" else 0.05
    diff = note(f"{model_type}/{dtype}", "attn_rows_vs_fp32", rec.attn[valid], reads["f32"][0].attn[valid])
    assert diff <= tol + ATOL
    rows = rec.attn.nan_to_num(0).sum(-1)
    assert (rows <= 1 + 1e-5).all()
    assert torch.isfinite(logits).all()
    # residual patches (IC-ICL, task vectors, patching) and isolation in the model dtype
    d = manifest["d_model"]
    patch = ResidualPatch(1, torch.tensor([[3], [5]]), torch.ones(2, 1, d), mode="add")
    rec = Recorder(
        L,
        Positions(LABEL[:, :0], torch.zeros(2, 2, dtype=torch.long)),
        (),
        patches=(patch,),
        edit=isolation_edit({0}, label_rows(max(map(len, PROMPTS)))),
    )
    with torch.no_grad():
        patched = forward(net, rec).logits[:, -1]
    assert torch.isfinite(patched).all() and (patched.float() - logits.float()).abs().max() > 0
    # losses and saliency products in float32
    sal = saliency_matrices(net, PROMPTS[0], 1, LABEL_IDS, L)
    assert sal.dtype.name == "float32" and math.isfinite(float(sal.sum())) and sal.sum() > 0
    frame = pd.DataFrame({"input_ids": PROMPTS, "label_pos": [[2, 6, 9], [1, 4]], "n_tokens": [12, 9]})
    beta = torch.zeros(L, manifest["n_heads"], 3, requires_grad=True)
    with torch.enable_grad():
        out = reweighted_label_logits(net, frame, LABEL_IDS, beta, L, 0)
        assert out.dtype == torch.float32
        torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert beta.grad.dtype == torch.float32 and torch.isfinite(beta.grad).all()


def test_zz_report_max_diffs():
    """Prints the largest |difference| of each check (run with -s to see them)."""
    for model_type, checks in sorted(MAX_DIFF.items()):
        print(model_type, {k: f"{v:.1e}" for k, v in checks.items()})
