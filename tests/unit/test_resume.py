"""Resume where it costs hours: TS-FT and layer-LoRA checkpoints outside the output directory, keyed by
the job's settings; token states resume from their partial file; float16 overflow is never a silent inf."""

from __future__ import annotations

import logging
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from iclscope.core.config import ModelSpec
from iclscope.core.resume import checkpoint_dir
from iclscope.model.models import prepare_model

WC = {"model": "m", "dataset": "d", "arm": "space", "seed": "0"}


def test_checkpoint_dir_is_outside_the_output_and_keyed_by_settings_and_code(tmp_path):
    a = checkpoint_dir("tsft", WC, '{"lam": 0.5}', "abc", root=tmp_path)
    assert a == checkpoint_dir("tsft", WC, '{"lam": 0.5}', "abc", root=tmp_path)
    assert a.parent == tmp_path / "tsft" / "space" / "d" / "m" / "0"  # wildcards in name order
    a.mkdir(parents=True)
    b = checkpoint_dir("tsft", WC, '{"lam": 0.5}', "abd", root=tmp_path)  # other code
    c = checkpoint_dir("tsft", WC, '{"lam": 0.7}', "abd", root=tmp_path)  # other settings
    assert len({a, b, c}) == 3
    assert not a.exists()  # a checkpoint of other settings can never be resumed: removed
    assert checkpoint_dir("tsft", {**WC, "seed": "1"}, '{"lam": 0.5}', "abc", root=tmp_path) != a


def tsft_setup(prepared_tiny, **changes):
    from test_icicl_tsft import SPEC, frame

    from iclscope.methods.taskspace.tsft import TSFTSettings

    settings = TSFTSettings(
        **{
            "steps": 6,
            "batch_size": 4,
            "n_train": 12,
            "n_val": 4,
            "n_test": 6,
            "checkpoint_every": 2,
            "eval_every": 3,
            "layer": 1,
            "lr": 1e-2,
            **changes,
        }
    )
    return frame(), SPEC, settings


def test_tsft_retry_resumes_from_its_checkpoint_after_snakemake_deleted_the_output(prepared_tiny, tmp_path, caplog):
    """A killed attempt leaves its checkpoint outside its output directory; Snakemake deletes the output
    directory before the retry; the retry resumes (the log names the steps not redone) and ends with the
    loss curve of an uninterrupted run. Changed settings start over."""
    from iclscope.methods.taskspace.tsft import train_tsft

    spec, model_dir = prepared_tiny
    df, dspec, settings = tsft_setup(prepared_tiny)
    full = train_tsft(df, dspec, model_dir, spec, None, settings, tmp_path / "full")
    ckpt = checkpoint_dir("tsft", WC, repr(settings), "code", root=tmp_path / ".resume")
    out = tmp_path / "run"
    assert train_tsft(df, dspec, model_dir, spec, None, settings, out, stop_after=5, checkpoint_dir=ckpt) == {
        "stopped_at": 5
    }
    assert (ckpt / "trainer_state.pt").exists() and not (out / "checkpoint").exists()
    shutil.rmtree(out)  # what Snakemake does to a failed job's directory() output before the retry
    with caplog.at_level(logging.INFO):
        resumed = train_tsft(df, dspec, model_dir, spec, None, settings, out, checkpoint_dir=ckpt)
    assert "resuming at step 4 of 6" in caplog.text and "steps 1..4 are not redone" in caplog.text
    a, b = (pd.read_parquet(d / "train_log.parquet") for d in (tmp_path / "full", out))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert resumed["accuracy"] == full["accuracy"] and not ckpt.exists()  # removed once the run is whole

    # a change of settings: another key, nothing resumed
    _, _, other = tsft_setup(prepared_tiny, lr=5e-3)
    train_tsft(df, dspec, model_dir, spec, None, settings, tmp_path / "k2", stop_after=3, checkpoint_dir=ckpt)
    ckpt2 = checkpoint_dir("tsft", WC, repr(other), "code", root=tmp_path / ".resume")
    assert ckpt2 != ckpt and not ckpt.exists()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_tsft(df, dspec, model_dir, spec, None, other, tmp_path / "k3", checkpoint_dir=ckpt2)
    assert "resuming" not in caplog.text


def test_layer_lora_resume_is_keyed_by_its_settings(prepared_tiny, tmp_path, caplog):
    from test_layer_lora import SPEC, frame

    from iclscope.methods.decodability.layer_lora import LayerLoRASettings, train_layer_lora

    spec, model_dir = prepared_tiny
    settings = LayerLoRASettings(steps=4, batch_size=4, n_train=8, n_monitor=4, lr=1e-2, checkpoint_every=2)
    ckpt = checkpoint_dir("layer_lora", WC, repr(settings), "code", root=tmp_path)
    assert train_layer_lora(
        frame(), SPEC, model_dir, spec, settings, "first", tmp_path / "a", checkpoint_dir=ckpt, stop_after=3
    ) == {"stopped_at": 3}
    assert (ckpt / "trainer_state.pt").exists()
    changed = LayerLoRASettings(steps=4, batch_size=4, n_train=8, n_monitor=4, lr=2e-2, checkpoint_every=2)
    ckpt_changed = checkpoint_dir("layer_lora", WC, repr(changed), "code", root=tmp_path)
    with caplog.at_level(logging.INFO):
        train_layer_lora(frame(), SPEC, model_dir, spec, changed, "first", tmp_path / "b", checkpoint_dir=ckpt_changed)
    assert "resuming" not in caplog.text and not ckpt.exists()
    assert train_layer_lora(
        frame(),
        SPEC,
        model_dir,
        spec,
        settings,
        "first",
        tmp_path / "c",
        checkpoint_dir=checkpoint_dir("layer_lora", WC, repr(settings), "code", root=tmp_path),
        stop_after=3,
    ) == {"stopped_at": 3}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_layer_lora(
            frame(),
            SPEC,
            model_dir,
            spec,
            settings,
            "first",
            tmp_path / "c",
            checkpoint_dir=checkpoint_dir("layer_lora", WC, repr(settings), "code", root=tmp_path),
        )
    assert "steps 1..2 are not redone" in caplog.text


# --------------------------------------------------------------------------- token states
def corpus(tmp_path):
    from test_extract import WORDS

    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(10)) for i in range(30)]
    pd.DataFrame({"text": texts, "split": "train"}).to_parquet(tmp_path / "corpus.parquet")
    return tmp_path / "corpus.parquet"


def read_all(path) -> dict:
    with h5py.File(path) as f:
        arrays = {
            k: f[k][()] for k in ("resid/tokens", "tokens/id", "tokens/prev", "tokens/sentence", "tokens/position")
        }
        return {**arrays, "attrs": dict(f.attrs)}


def test_token_states_resume_from_their_partial_file(prepared_tiny, tmp_path, caplog):
    import dataclasses

    from iclscope.model.token_states import extract_token_states

    spec, model_dir = prepared_tiny
    spec = dataclasses.replace(spec, batch_size=4)
    data = corpus(tmp_path)
    kw = {"max_tokens": 200, "max_sentence_tokens": 12}
    extract_token_states(data, model_dir, tmp_path / "full.h5", spec, **kw)
    assert extract_token_states(data, model_dir, tmp_path / "killed.h5", spec, stop_after=3, **kw) == {
        "stopped_after_batches": 3
    }
    assert (tmp_path / "killed.h5.partial").exists() and not (tmp_path / "killed.h5").exists()
    with caplog.at_level(logging.INFO):
        extract_token_states(data, model_dir, tmp_path / "killed.h5", spec, **kw)
    assert "resuming" in caplog.text and "after batch 3 of" in caplog.text
    full, resumed = read_all(tmp_path / "full.h5"), read_all(tmp_path / "killed.h5")
    for name in ("resid/tokens", "tokens/id", "tokens/prev", "tokens/sentence", "tokens/position"):
        np.testing.assert_array_equal(full[name], resumed[name])
    assert resumed["attrs"]["complete"] and resumed["attrs"]["store_dtype"] == "float16"

    # a partial file of another corpus is discarded, not resumed
    extract_token_states(data, model_dir, tmp_path / "other.h5", spec, stop_after=2, **kw)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        extract_token_states(data, model_dir, tmp_path / "other.h5", spec, max_tokens=150, max_sentence_tokens=12)
    assert "discarding" in caplog.text and "resuming" not in caplog.text


@pytest.fixture
def loud_model(tmp_path):
    """A tiny Llama whose embeddings are scaled to ~1e5: residual states beyond float16's 65504."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiny_models import make_tiny_model

    src = make_tiny_model("llama", tmp_path / "loud")
    net = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        net.get_input_embeddings().weight.mul_(5e6)
    net.save_pretrained(src)
    spec = ModelSpec(name="loud", source="local", path=str(src), batch_size=4)
    prepare_model(spec, tmp_path / "prepared")
    return spec, tmp_path / "prepared"


def test_float16_overflow_is_stored_in_float32_and_recorded_or_reported(loud_model, tmp_path):
    """States beyond float16's range: float32 storage, recorded in the file; a float16 model whose forward
    pass overflows: an error naming the layer and the fix; extraction likewise, never a silent inf."""
    import dataclasses

    from test_extract import prompts_file

    from iclscope.model.extract import ExtractSettings, extract
    from iclscope.model.token_states import extract_token_states

    spec, model_dir = loud_model
    data = corpus(tmp_path)
    kw = {"max_tokens": 150, "max_sentence_tokens": 12}
    extract_token_states(data, model_dir, tmp_path / "ts.h5", spec, **kw)
    stored = read_all(tmp_path / "ts.h5")
    assert stored["attrs"]["store_dtype"] == "float32" and "exceeds float16" in stored["attrs"]["overflow_float16"]
    assert stored["resid/tokens"].dtype == np.float32 and np.isfinite(stored["resid/tokens"]).all()
    assert np.abs(stored["resid/tokens"]).max() > np.finfo(np.float16).max

    half = dataclasses.replace(spec, dtype="float16")
    with pytest.raises(ValueError, match="float16 forward pass produced non-finite"):
        extract_token_states(data, model_dir, tmp_path / "half.h5", half, **kw)
    ppath, _ = prompts_file((spec, model_dir), tmp_path, n_test=4)
    with pytest.raises(FloatingPointError, match="float16 forward pass produced non-finite"):
        extract(ppath, model_dir, tmp_path / "a.h5", half, ExtractSettings())
    with pytest.raises(OverflowError, match="store_dtype: float32"):
        extract(ppath, model_dir, tmp_path / "b.h5", spec, ExtractSettings(store_dtype="float16"))
    extract(ppath, model_dir, tmp_path / "c.h5", spec, ExtractSettings(store_dtype="float32"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_paths_run_on_cpu(prepared_tiny, tmp_path, dtype):
    """bf16 / fp16 models load in that dtype and extract and token-state files stay close to float32."""
    import dataclasses

    from test_extract import prompts_file

    from iclscope.model.extract import ExtractSettings, extract
    from iclscope.model.token_states import extract_token_states

    spec, model_dir = prepared_tiny
    half = dataclasses.replace(spec, dtype=dtype)
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=4)
    for s, name in ((spec, "f32"), (half, dtype)):
        extract(ppath, model_dir, tmp_path / f"{name}.h5", s, ExtractSettings(store_dtype="float32"))
        extract_token_states(
            corpus(tmp_path), model_dir, tmp_path / f"ts-{name}.h5", s, max_tokens=120, max_sentence_tokens=12
        )
    with h5py.File(tmp_path / "f32.h5") as a, h5py.File(tmp_path / f"{dtype}.h5") as b:
        assert b.attrs["dtype"] == dtype
        np.testing.assert_allclose(b["resid/query"][()], a["resid/query"][()], atol=0.05, rtol=0.05)
    a, b = read_all(tmp_path / "ts-f32.h5"), read_all(tmp_path / f"ts-{dtype}.h5")
    assert b["attrs"]["dtype"] == dtype
    np.testing.assert_allclose(b["resid/tokens"].astype(float), a["resid/tokens"].astype(float), atol=0.05, rtol=0.05)
