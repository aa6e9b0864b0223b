"""Extraction on tiny random Llama / GPT-2 models: parity with plain forward passes, HDF5
round trip, resume of a killed run, incomplete files refused."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from iclscope.core.atomic import partial_path
from iclscope.core.config import DatasetSpec, PromptSpec
from iclscope.core.store import IncompleteFileError, label_states, open_activations, read_prompts
from iclscope.core.tables import write_table
from iclscope.model import extract as extract_mod
from iclscope.model.extract import ExtractSettings, extract
from iclscope.model.loading import load_model
from iclscope.model.models import load_tokenizer
from iclscope.model.prompts import build_prompts

WORDS = ["cat", "dog", "bird", "fun", "car", "crew", "plot", "late", "love", "rude", "great", "flight"]


def prompts_file(prepared, tmp_path, kind="classification", n_test=8, n_train=0):
    spec_model, model_dir = prepared
    tokenizer, manifest = load_tokenizer(model_dir)
    rows = []
    if kind == "classification":
        n_train_rows = 4 + 2 * n_train  # the demonstrations come from the train split too
        for i in range(n_train_rows + n_test * 2):
            rows.append(
                {
                    "text": f"I {WORDS[i % len(WORDS)]} it {i}",
                    "label": ["negative", "positive"][i % 2],
                    "split": "train" if i < n_train_rows else "test",
                    "task": "t",
                }
            )
        spec = DatasetSpec(
            name="d",
            source="local",
            path="x",
            classes={"negative": " negative", "positive": " positive"},
            prompts=PromptSpec(
                template="Tweet: {text}\nSentiment:{label}", seeds=(1, 2), n_test=n_test // 2, n_train=n_train
            ),
        )
    else:
        for task, fn in {"upper": str.upper, "first": lambda w: w[0]}.items():
            for i, w in enumerate(WORDS):
                rows.append({"text": w, "label": fn(w), "split": "test" if i >= 6 else "train", "task": task})
        spec = DatasetSpec(
            name="d",
            source="words",
            kind="generation",
            prompts=PromptSpec(template="{text} ->{label}", shots=(1, 3), seeds=(3,), n_test=4),
        )
    df = pd.DataFrame(rows)
    df.insert(0, "row_id", range(len(df)))
    table, meta = build_prompts(df, spec, tokenizer, manifest["context_length"])
    path = tmp_path / "prompts.parquet"
    write_table(table, path, meta)
    return path, table


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_activations_equal_plain_forward(prepared_tiny, tmp_path, kind):
    spec, model_dir = prepared_tiny
    ppath, table = prompts_file(prepared_tiny, tmp_path, kind)
    settings = ExtractSettings(store_dtype="float32", topk=5, max_new_tokens=3)
    out = tmp_path / "act.h5"
    extract(ppath, model_dir, out, spec, settings)
    model, tok, manifest = load_model(model_dir, attn_implementation="eager")
    with open_activations(out) as f:
        prompts = read_prompts(f)
        assert f.attrs["complete"] and f.attrs["n_done"] == len(table)
        np.testing.assert_array_equal(prompts["prompt_id"], table["prompt_id"])
        for i, rec in enumerate(table.itertuples()):
            ids = torch.as_tensor(rec.input_ids, dtype=torch.long)[None]
            with torch.no_grad():
                ref = model(ids, output_hidden_states=True, output_attentions=True)
            logits = ref.logits[0, -1]
            topk = logits.topk(5)
            np.testing.assert_allclose(f["logits/topk_values"][i], topk.values.numpy(), rtol=1e-4, atol=1e-4)
            q = rec.query_pos
            for layer in range(manifest["n_layers"]):  # last hidden state of HF may be normed: skip it
                np.testing.assert_allclose(
                    f["resid/query"][i, layer], ref.hidden_states[layer][0, q].numpy(), rtol=1e-4, atol=1e-4
                )
            s, e = rec.query_span
            np.testing.assert_allclose(
                f["resid/last_input"][i, 1], ref.hidden_states[1][0, e - 1].numpy(), rtol=1e-4, atol=1e-4
            )
            np.testing.assert_allclose(
                f["resid/content_mean"][i, 1], ref.hidden_states[1][0, s:e].mean(0).numpy(), rtol=1e-4, atol=1e-4
            )
            for k, pos in enumerate(rec.label_pos):
                np.testing.assert_allclose(
                    label_states(f)[i, k, 1], ref.hidden_states[1][0, pos].numpy(), rtol=1e-4, atol=1e-4
                )
                for layer in range(manifest["n_layers"]):
                    np.testing.assert_allclose(
                        f["attn/query_to_label"][i, layer, :, k],
                        ref.attentions[layer][0, :, q, pos].numpy(),
                        rtol=1e-4,
                        atol=1e-5,
                    )
            if kind == "classification":
                ids_ = f.attrs["label_token_ids"]
                np.testing.assert_allclose(f["logits/label"][i], logits[ids_].numpy(), rtol=1e-4, atol=1e-4)
            else:
                gen = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
                np.testing.assert_array_equal(f["generation/tokens"][i], gen[0, ids.shape[1] :].numpy())


def test_kill_and_resume_gives_identical_file(prepared_tiny, tmp_path, monkeypatch):
    spec, model_dir = prepared_tiny  # batch_size 3 -> windows of 24 prompts
    ppath, table = prompts_file(prepared_tiny, tmp_path, n_test=16)
    settings = ExtractSettings(window_batches=1)  # windows of 3 prompts
    full = tmp_path / "full.h5"
    extract(ppath, model_dir, full, spec, settings)

    killed = tmp_path / "killed.h5"
    real_run_batch, calls = extract_mod.run_batch, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_run_batch(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "run_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        extract(ppath, model_dir, killed, spec, settings)
    assert not killed.exists() and partial_path(killed).exists()
    with pytest.raises(IncompleteFileError, match="incomplete"):
        open_activations(partial_path(killed))
    with h5py.File(partial_path(killed)) as f:  # windows split at shared-prefix boundaries: >= 1 batch each
        done = int(f.attrs["n_done"])
        assert 3 <= done <= 9 and done % 3 == 0 and not f.attrs["complete"]

    monkeypatch.setattr(extract_mod, "run_batch", real_run_batch)
    summary = extract(ppath, model_dir, killed, spec, settings)
    assert summary["resumed_at"] == done
    with open_activations(full) as a, open_activations(killed) as b:
        for name in ("resid/query", "attn/query_to_label", "logits/label", "logits/topk_ids"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        np.testing.assert_array_equal(label_states(a)[:], label_states(b)[:])


def test_partial_file_with_other_prompts_is_discarded(prepared_tiny, tmp_path):
    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path)
    out = tmp_path / "act.h5"
    with h5py.File(partial_path(out), "w") as f:
        f.attrs.update(prompts_sha256="other", params_sha256="other", n_done=3)
    summary = extract(ppath, model_dir, out, spec, ExtractSettings())
    assert summary["resumed_at"] == 0 and out.exists() and not partial_path(out).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 96 kB tmpfs (the tests run as root, as `make test` does): a disk that fills up mid-write."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_during_extraction_leaves_no_file_and_names_the_fix(prepared_tiny, tmp_path, small_disk):
    """Run in a child process, as a job is: after ENOSPC the HDF5 library's state in that process is
    spent (h5py cannot close the file it failed to flush), and the job exits with the error."""
    spec, model_dir = prepared_tiny
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=160)  # label states once per prefix: 160 prompts > 96 kB
    out = small_disk / "act.h5"
    child = f"""
import errno, sys
from iclscope.core.config import ModelSpec
from iclscope.model.extract import ExtractSettings, extract
try:
    extract({str(ppath)!r}, {str(model_dir)!r}, {str(out)!r}, ModelSpec.from_config({spec.name!r}, {{"source": "local",
            "path": {str(model_dir)!r}}}), ExtractSettings(store_dtype="float32", compression=None))
except OSError as exc:
    print("ERRNO", exc.errno, "MESSAGE", exc)
    sys.exit(0)
print("NO ERROR")
"""
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(extract_mod.__file__).parents[1])},
    )
    assert f"ERRNO {errno.ENOSPC} MESSAGE [Errno 28] disk full while writing {out} (" in done.stdout, done.stderr
    assert "partial file was removed" in done.stdout and "MB free" in done.stdout
    assert list(small_disk.iterdir()) == []  # neither the file nor its .partial


def test_disk_full_while_writing_a_table_leaves_no_file(small_disk):
    big = pd.DataFrame({"x": np.random.default_rng(0).random(100_000)})
    with pytest.raises(OSError, match="disk full while writing"):
        write_table(big, small_disk / "t.parquet")
    assert list(small_disk.iterdir()) == []


def test_truncated_file_is_reported_with_its_name(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(IncompleteFileError, match="bad.h5"):
        open_activations(bad)


def test_gathered_shards_read_like_one_file(prepared_tiny, tmp_path):
    from iclscope.core.store import gather_shards, shard_rows

    spec, model_dir = prepared_tiny
    ppath, table = prompts_file(prepared_tiny, tmp_path, n_test=10)
    whole = tmp_path / "whole.h5"
    extract(ppath, model_dir, whole, spec, ExtractSettings())
    shard_dir = tmp_path / "act.shards"
    paths = [shard_dir / f"{i}-of-3.h5" for i in (1, 2, 3)]
    for i, p in enumerate(paths, start=1):
        extract(ppath, model_dir, p, spec, ExtractSettings(), shard=(i, 3))
    assert [shard_rows(len(table), i, 3) for i in (1, 2, 3)] == [(0, 3), (3, 7), (7, 10)]
    gathered = tmp_path / "act.h5"
    gather_shards(paths, gathered)
    with open_activations(whole) as a, open_activations(gathered) as b:
        assert b["resid/query"].is_virtual
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        # each shard numbers its own shared prefixes: label states compared per prompt, through the reader
        np.testing.assert_allclose(label_states(a)[:], label_states(b)[:], rtol=1e-5, atol=1e-5)
        names = [n for n in names if not n.startswith("prefix/") and n != "prompts/prefix_index"]
        for name in names:  # batches differ (other padding), so equal up to float32 rounding
            x, y = a[name][()], b[name][()]
            if x.dtype.kind in "fc":
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(x, y, err_msg=name)
        shards = [open_activations(p) for p in paths]
        for name in names:  # and bit-identical to the shards themselves
            if not name.startswith("prompts/"):
                np.testing.assert_array_equal(np.concatenate([s[name][()] for s in shards]), b[name][()])
        for s in shards:
            s.close()
        assert b.attrs["n_done"] == len(table) and list(b.attrs["rows"]) == [0, len(table)]
    # the gathered file and its shard directory move together (relative source paths)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    gathered.rename(moved / "act.h5")
    shard_dir.rename(moved / "act.shards")
    with open_activations(moved / "act.h5") as b, open_activations(whole) as a:
        np.testing.assert_array_equal(a["resid/query"][()], b["resid/query"][()])


def test_streamed_token_ids_equal_the_table_from_any_row(tmp_path):
    from iclscope.core.tables import iter_list_column

    rows = [np.arange(i % 7 + 1, dtype=np.int32) + i for i in range(1000)]
    write_table(pd.DataFrame({"input_ids": rows}), tmp_path / "t.parquet")
    for start in (0, 1, 255, 256, 999):
        streamed = list(iter_list_column(tmp_path / "t.parquet", "input_ids", start=start, batch_rows=256))
        assert len(streamed) == 1000 - start
        for got, want in zip(streamed, rows[start:], strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_generated_nul_character_is_stored_not_fatal(prepared_tiny, tmp_path, monkeypatch):
    """HDF5 strings cannot hold NUL; a fine-tuned tiny model generated one (layer-wise LoRA). The text
    keeps a replacement character, the token ids the exact answer."""
    from transformers import PreTrainedTokenizerBase

    spec, model_dir = prepared_tiny
    ppath, table = prompts_file(prepared_tiny, tmp_path, "generation")
    decode = PreTrainedTokenizerBase.decode
    monkeypatch.setattr(PreTrainedTokenizerBase, "decode", lambda self, *a, **k: "a\x00" + decode(self, *a, **k))
    out = tmp_path / "act.h5"
    extract(ppath, model_dir, out, spec, ExtractSettings(max_new_tokens=2))
    with open_activations(out) as f:
        texts = f["generation/text"].asstr()[()]
        assert len(texts) == len(table) and all(t.startswith("a\ufffd") for t in texts)
