"""Extraction throughput of iclscope against the forward-pass limit and a hand-written naive
extraction, on the same prompts, model, batch and dtype, in one run; then the HDF5 layout.

- body forward: `model(input_ids, attention_mask, position_ids, logits_to_keep=1)`, SDPA, no hooks,
  no writing, the same length-sorted batches: the compute any extraction must do;
- iclscope: `iclscope.model.extract.extract` end to end (everything the layout stores, written to disk);
- naive: what users write by hand: one prompt at a time, `output_hidden_states=True`,
  `output_attentions=True` (eager attention), full-vocabulary logits, one h5py write per prompt;
- TransformerLens 4: `TransformerBridge.boot_transformers(model_dir)` + `run_with_cache`, one
  prompt at a time, caching only the hooks the layout stores (resid_post, attention pattern), the
  query row kept in memory (no writing). Installed by `make bench` only (requirements.txt, `# bench:`).

Before any speed is reported, iclscope's stored residual states, label logits and attention rows
are checked against the naive path's, and its residual states against TransformerLens's
(float16 tolerance).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml

from .common import MODEL, REPO, row, timed

N_PROMPTS = 48


def _prompts(tmp: Path):
    from iclscope.core.tables import read_meta, read_table, write_table
    from iclscope.model.prompts import prompts_digest

    src = REPO / f"results/prompts/{MODEL}/tweets.parquet"
    table = read_table(src)
    table = table.iloc[np.argsort(-table["n_tokens"].to_numpy(), kind="stable")[:N_PROMPTS]].reset_index(drop=True)
    table["prompt_id"] = np.arange(len(table))
    meta = read_meta(src)
    meta["prompts_sha256"] = prompts_digest(table)
    path = tmp / "prompts.parquet"
    write_table(table, path, meta)
    return path, table, meta


def _body_forward(model, tokenizer, table, spec) -> None:
    from iclscope.model.batching import make_batches
    from iclscope.model.capture import left_pad

    device = next(model.parameters()).device
    lengths = table["n_tokens"].to_numpy()
    with torch.inference_mode():
        for batch in make_batches(lengths, spec.batch_size, spec.max_batch_tokens):
            ids, mask, pos = left_pad([table["input_ids"].iat[i] for i in batch], tokenizer.pad_token_id, device)
            model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)


def _naive(model, table, label_ids, path: Path) -> None:
    """One prompt at a time, all hidden states and attentions, per-example h5py writes."""
    n = len(table)
    with h5py.File(path, "w") as f, torch.inference_mode():
        for i in range(n):
            ids = torch.tensor(table["input_ids"].iat[i], dtype=torch.long)[None]
            out = model(ids, output_hidden_states=True, output_attentions=True)
            q = int(table["query_pos"].iat[i])
            label_pos = np.asarray(table["label_pos"].iat[i])
            g = f.create_group(str(i))
            g["resid_query"] = torch.stack([h[0, q] for h in out.hidden_states]).numpy()
            g["attn_query_to_label"] = torch.stack([a[0, :, q, label_pos] for a in out.attentions]).numpy()
            g["logits_label"] = out.logits[0, q, label_ids].numpy()


def _transformer_lens(bridge, table) -> list[dict]:
    """TransformerLens's way: run_with_cache per prompt, the stored hooks only; query rows in memory."""
    n_layers = bridge.cfg.n_layers
    wanted = lambda name: name.endswith("hook_resid_post") or name.endswith("attn.hook_pattern")  # noqa: E731
    out = []
    with torch.inference_mode():
        for i in range(len(table)):
            ids = torch.tensor(table["input_ids"].iat[i], dtype=torch.long)[None]
            q, label_pos = int(table["query_pos"].iat[i]), np.asarray(table["label_pos"].iat[i])
            _, cache = bridge.run_with_cache(ids, names_filter=wanted)
            out.append(
                {
                    "resid": torch.stack([cache[f"blocks.{n}.hook_resid_post"][0, q] for n in range(n_layers)]).numpy(),
                    "attn": torch.stack(
                        [cache[f"blocks.{n}.attn.hook_pattern"][0, :, q, label_pos] for n in range(n_layers)]
                    ).numpy(),
                }
            )
    return out


def _boot_transformer_lens(model_dir: Path, tokenizer, dtype: torch.dtype):
    """TransformerLens's bridge over the prepared model's Hugging Face weights, or None when not installed."""
    from iclscope.model.models import read_manifest

    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    weights = read_manifest(model_dir)["weights_path"]
    return TransformerBridge.boot_transformers(weights, device="cpu", dtype=dtype, tokenizer=tokenizer)


def run() -> list[dict]:
    from iclscope.core.config import ModelSpec
    from iclscope.model.extract import ExtractSettings, extract
    from iclscope.model.loading import load_model

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    spec = ModelSpec.from_config(MODEL, cfg["models"][MODEL])
    model_dir = REPO / f"results/models/{MODEL}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts_path, table, meta = _prompts(tmp)
        tokens = int(table["n_tokens"].sum())
        sdpa, tokenizer, _ = load_model(model_dir, device=spec.device, dtype=spec.dtype)
        eager, _, _ = load_model(model_dir, device=spec.device, dtype=spec.dtype, attn_implementation="eager")
        settings = ExtractSettings.from_config(cfg["extract"])
        bridge = _boot_transformer_lens(model_dir, tokenizer, next(sdpa.parameters()).dtype)
        seconds = {"body": [], "iclscope": [], "naive": []} | ({"transformer_lens": []} if bridge else {})
        for rep in range(3):  # interleaved, so drifts in machine load hit every method alike; best of 3
            seconds["body"].append(timed(lambda: _body_forward(sdpa, tokenizer, table, spec), repeats=1))
            out = tmp / f"iclscope{rep}.h5"
            seconds["iclscope"].append(extract(prompts_path, model_dir, out, spec, settings)["seconds"])
            naive_out = tmp / f"naive{rep}.h5"
            seconds["naive"].append(
                timed(
                    lambda: _naive(eager, table, meta["label_token_ids"], naive_out),  # noqa: B023
                    repeats=1,
                )
            )
            if bridge is not None:
                t0 = time.perf_counter()
                cached = _transformer_lens(bridge, table)  # the last repeat's rows are the ones checked
                seconds["transformer_lens"].append(time.perf_counter() - t0)
        check_parity(tmp / "iclscope0.h5", tmp / "naive0.h5", table)
        if bridge is not None:
            check_parity_transformer_lens(tmp / "iclscope0.h5", cached)
        best = {k: min(v) for k, v in seconds.items()}
        tps = {k: tokens / s for k, s in best.items()}
        what = f"{N_PROMPTS} prompts, {tokens} tokens, {spec.device}/{spec.dtype}, batch {spec.batch_size}"
        rows.append(
            row(
                "extraction",
                "iclscope tokens/s",
                tps["iclscope"],
                "tokens/s",
                "body forward",
                tps["iclscope"] / tps["body"],
                "≥ 0.95",
                tps["iclscope"] / tps["body"] >= 0.95,
                what,
            )
        )
        rows.append(
            row(
                "extraction",
                "iclscope vs naive",
                tps["iclscope"],
                "tokens/s",
                "naive hand-written",
                tps["iclscope"] / tps["naive"],
                "≥ 1.8",
                tps["iclscope"] / tps["naive"] >= 1.8,
                what,
            )
        )
        rows.append(
            row(
                "extraction",
                "naive tokens/s",
                tps["naive"],
                "tokens/s",
                "body forward",
                tps["naive"] / tps["body"],
                note=what,
            )
        )
        if bridge is None:
            rows.append(
                row(
                    "extraction",
                    "iclscope vs TransformerLens",
                    0,
                    "-",
                    note="transformer-lens not installed "
                    "(`make bench` installs the requirements.txt lines marked `# bench:`)",
                )
            )
        else:
            ratio = tps["iclscope"] / tps["transformer_lens"]
            rows.append(
                row(
                    "extraction",
                    "iclscope vs TransformerLens",
                    tps["iclscope"],
                    "tokens/s",
                    "TransformerLens 4 run_with_cache",
                    ratio,
                    "≥ 1.45",
                    ratio >= 1.45,
                    what,
                )
            )
            rows.append(
                row(
                    "extraction",
                    "TransformerLens tokens/s",
                    tps["transformer_lens"],
                    "tokens/s",
                    "body forward",
                    tps["transformer_lens"] / tps["body"],
                    note=what,
                )
            )
        rows.append(row("extraction", "body forward tokens/s", tps["body"], "tokens/s", note=what))
    rows += hdf5_layout()
    return rows


def check_parity(ours: Path, naive: Path, table) -> None:
    """iclscope's stored arrays equal the naive path's within float16 tolerance, or raise."""
    with h5py.File(ours) as a, h5py.File(naive) as b:
        for i in range(len(table)):
            # HF's last hidden state is after the final norm; iclscope stores the block output
            expected = b[str(i)]["resid_query"][:-1]
            got = a["resid/query"][i, :-1].astype(np.float32)
            scale = np.abs(expected).max(axis=-1, keepdims=True)
            if not np.all(np.abs(got - expected) <= 2e-3 * scale + 1e-3):
                raise AssertionError(f"prompt {i}: stored query residuals differ from the naive path's")
            np.testing.assert_allclose(a["logits/label"][i], b[str(i)]["logits_label"][()], rtol=1e-3, atol=1e-3)
            attn = a["attn/query_to_label"][i]  # [L, H, K]
            k = attn.shape[-1]
            np.testing.assert_allclose(attn, b[str(i)]["attn_query_to_label"][()][..., :k], atol=1e-4)


def check_parity_transformer_lens(ours: Path, cached: list[dict]) -> None:
    """iclscope's stored residuals (block outputs) and attention rows equal TransformerLens's, or raise."""
    with h5py.File(ours) as a:
        for i, c in enumerate(cached):
            got = a["resid/query"][i, 1:].astype(np.float32)  # index 0 is the embedding
            scale = np.abs(c["resid"]).max(axis=-1, keepdims=True)
            if not np.all(np.abs(got - c["resid"]) <= 2e-3 * scale + 1e-3):
                raise AssertionError(f"prompt {i}: stored query residuals differ from TransformerLens's")
            attn = a["attn/query_to_label"][i]
            np.testing.assert_allclose(attn, c["attn"][..., : attn.shape[-1]], atol=1e-3)


def hdf5_layout() -> list[dict]:
    """Bytes per stored value of the default run's tweets file, and reading one layer vs all."""
    path = REPO / f"results/activations/{MODEL}/tweets.h5"
    if not path.exists():
        return [row("hdf5", "layout", 0, "-", note=f"{path} missing: run `make run` first")]
    with h5py.File(path) as f:
        values = 0

        def count(_, obj):
            nonlocal values
            if isinstance(obj, h5py.Dataset):
                values += obj.size

        f.visititems(count)
        ds = f["resid/query"]
        layer = ds.shape[1] // 2
        t_layer = timed(lambda: ds[:, layer, :])
        t0 = time.perf_counter()
        ds[()]
        t_all = time.perf_counter() - t0
        n = ds.shape[0]
    size = path.stat().st_size
    return [
        row(
            "hdf5",
            "bytes per stored value",
            size / values,
            "bytes",
            note=f"{path.name}: {size / 1e6:.1f} MB, {values:,} values (float16 residuals, lzf)",
        ),
        row(
            "hdf5",
            f"read one layer of /resid/query across {n} prompts",
            t_layer,
            "s",
            "read every layer",
            t_layer / t_all,
            "≈ 1 / (L+1)",
            note=f"{ds.shape[1]} layers",
        ),
    ]
