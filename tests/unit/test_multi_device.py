"""Every model stage on a model dispatched over several devices gives what it gives on one device.

`device_map: auto` over several GPUs runs each block where the map puts it through accelerate's
dispatch hooks (AlignDevicesHook: inputs moved to the block's execution device, outputs of the
whole model brought back to the inputs' device). This machine has no GPU; accelerate's offload
uses the same hooks: here the input embedding and every other block live on "disk" (weights on
the meta device until their forward pass loads them from an offload folder), the rest on the CPU.
Each stage runs once on the plain one-device model and once on the dispatched one (its
`load_model` swapped for one that dispatches), and its activations / tables must agree.

Training stages (TS-FT, layer LoRA) cannot put adapters on offloaded (meta) weights: with blocks
offloaded they are refused when the model is loaded, with the reason (test below); on a map
without offload (the multi-GPU case) they train through the same hooks.

On a GPU node `make gpu-check` (tests/benchmarks/gpu_check.py) runs this file with
ICLSCOPE_TEST_DEVICES naming real devices ("cuda:0,cuda:1", or "cuda:0,cpu" with one GPU): the
blocks then alternate over those devices and each block *executes* where it lies, so every tensor
the hook layer touches crosses devices; the one-device reference stays CPU float32.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import torch

from iclscope.core.config import ConfigError

DEVICES = [d for d in os.environ.get("ICLSCOPE_TEST_DEVICES", "").split(",") if d]
# float32 on other devices sums in another order: tighter than any table's meaning, looser than bit-equal
ATOL = 1e-3 if DEVICES else 1e-5
TIMING = ("seconds", "speedup", "tokens_per_second", "time")
CARRIERS = ([" negative", " positive"], ["I saw{label} there", "It was{label}"])  # label words, carriers


def device_map(model, mode: str = "offload") -> dict[str, str]:
    """mode "offload": blocks alternately on "cpu" and "disk", the input embedding on "disk", every
    other module on "cpu". "resident": the same map without offload: ICLSCOPE_TEST_DEVICES's devices
    in turn (the embedding on the last, head and final norm on the first), or all "cpu"."""
    from iclscope.model.blocks import transformer_blocks

    prefix, blocks = transformer_blocks(model)
    embedding = model.get_input_embeddings()
    embedding_name = next(n for n, m in model.named_modules() if m is embedding)
    devices = ["cpu", "disk"] if mode == "offload" else (DEVICES or ["cpu"])
    mapping = {f"{prefix}.{i}": devices[i % len(devices)] for i in range(len(blocks))}
    for name, _ in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        if not name.startswith(prefix + "."):
            module = name.rsplit(".", 1)[0]
            mapping.setdefault(module, devices[-1] if module == embedding_name else devices[0])
    return mapping


def main_device(mapping: dict[str, str]) -> str:
    """accelerate's main device: "cpu" when the map has it, so that "cpu" blocks run on the CPU (with
    a GPU as main device they would be offloaded to it and run there)."""
    values = set(mapping.values())
    return "cpu" if "cpu" in values or values <= {"disk"} else sorted(values)[0]


def on_cpu(prepared):
    """The prepared tiny model's spec, loading on the CPU in float32: the one-device reference (a GPU
    machine's `device: auto` would load bfloat16 on the GPU)."""
    spec, model_dir = prepared
    return dataclasses.replace(spec, device="cpu", dtype="float32"), model_dir


@pytest.fixture
def dispatched(monkeypatch, tmp_path):
    """dispatched(module, offload=True): swap `module.load_model` (and iclscope.model.loading's, which
    stages that import it inside a function use) for one that dispatches the model with accelerate
    over the map above (offload folder under tmp_path); `dispatched.undo()` puts them back."""
    import accelerate

    from iclscope.model import loading

    real = loading.load_model

    def install(module, mode: str = "offload" if not DEVICES else "resident"):
        def load(model_dir, spec=None, **kwargs):
            net, tok, manifest = real(model_dir, spec, **kwargs)
            mapping = device_map(net, mode)
            net = accelerate.dispatch_model(
                net, mapping, main_device=main_device(mapping), offload_dir=str(tmp_path / "offload")
            )
            if mode == "offload":
                assert any(p.device.type == "meta" for p in net.parameters())  # really offloaded
            else:
                assert {str(p.device) for p in net.parameters()} == set(mapping.values())
            return net, tok, manifest

        if hasattr(module, "load_model"):
            monkeypatch.setattr(module, "load_model", load)
        monkeypatch.setattr(loading, "load_model", load)

    install.undo = monkeypatch.undo
    return install


def max_diff(a, b) -> float:
    """Max |a - b| over two results (DataFrames: numeric columns but timings; arrays; dicts of them)."""
    if isinstance(a, pd.DataFrame):
        assert list(a.columns) == list(b.columns) and len(a) == len(b)
        cols = [c for c in a.columns if pd.api.types.is_numeric_dtype(a[c]) and not any(t in c for t in TIMING)]
        if "metric" in a.columns:  # long tables: timing metrics are rows
            keep = ~a["metric"].astype(str).str.contains("|".join(TIMING))
            a, b = a[keep.to_numpy()], b[keep.to_numpy()]
        other = [c for c in a.columns if c not in cols and not any(t in c for t in TIMING)]
        for c in other:
            assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c
        return max(
            [0.0] + [float(np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)), initial=0)) for c in cols]
        )
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([0.0] + [max_diff(a[k], b[k]) for k in a if not any(t in str(k) for t in TIMING)])
    if isinstance(a, list | tuple):
        return max([0.0] + [max_diff(x, y) for x, y in zip(a, b, strict=True)])
    if isinstance(a, np.ndarray | torch.Tensor) and np.asarray(a).dtype.kind in "fiub":
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        assert a.shape == b.shape and (np.isnan(a) == np.isnan(b)).all()
        return float(np.nanmax(np.abs(a - b), initial=0))
    if isinstance(a, float | int | np.floating | np.integer) and not isinstance(a, bool):
        return 0.0 if (np.isnan(a) and np.isnan(b)) else abs(float(a) - float(b))
    assert str(a) == str(b)
    return 0.0


def same(stage: str, one, many, atol: float = ATOL, where: str = ",".join(DEVICES) or "cpu+disk") -> None:
    diff = max_diff(one, many)
    print(f"multi-device {stage}: max |one device - dispatched over {where}| = {diff:.3g} (tolerance {atol:g})")
    assert diff <= atol, (stage, diff)


def h5_arrays(path) -> dict:
    import h5py

    out = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub" else None
            )
        )
    return out


def test_extraction_and_anchor_states(prepared_tiny, tmp_path, dispatched):
    from test_extract import prompts_file

    from iclscope.model import anchor_states
    from iclscope.model import extract as module
    from iclscope.model.anchor_states import extract_anchor_states
    from iclscope.model.extract import ExtractSettings, extract

    spec, model_dir = on_cpu(prepared_tiny)
    for kind in ("classification", "generation"):
        ppath, _ = prompts_file(prepared_tiny, tmp_path / kind, kind)
        settings = ExtractSettings(store_dtype="float32", max_new_tokens=2 if kind == "generation" else 0)
        extract(ppath, model_dir, tmp_path / kind / "one.h5", spec, settings)
        extract_anchor_states(model_dir, spec, *CARRIERS, tmp_path / "a1.h5")
        dispatched(module)
        dispatched(anchor_states)
        extract(ppath, model_dir, tmp_path / kind / "many.h5", spec, settings)
        extract_anchor_states(model_dir, spec, *CARRIERS, tmp_path / "a2.h5")
        dispatched.undo()
        same(f"extract ({kind})", h5_arrays(tmp_path / kind / "one.h5"), h5_arrays(tmp_path / kind / "many.h5"))
    same("anchor states", h5_arrays(tmp_path / "a1.h5"), h5_arrays(tmp_path / "a2.h5"))


def twice(module, dispatched, run, mode: str | None = None):
    one = run()
    dispatched(module, *([mode] if mode else []))
    try:
        return one, run()
    finally:
        dispatched.undo()


def test_token_states(prepared_tiny, tmp_path, dispatched):
    from test_extract import WORDS

    from iclscope.model import token_states as module

    spec, model_dir = on_cpu(prepared_tiny)
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(20)]
    pd.DataFrame({"text": texts, "split": "train"}).to_parquet(tmp_path / "corpus.parquet")
    outs = iter([tmp_path / "one.h5", tmp_path / "many.h5"])
    twice(
        module,
        dispatched,
        lambda: module.extract_token_states(
            tmp_path / "corpus.parquet", model_dir, next(outs), spec, max_tokens=150, max_sentence_tokens=20
        ),
    )
    same("token_states", h5_arrays(tmp_path / "one.h5"), h5_arrays(tmp_path / "many.h5"))


def test_saliency_isolation_reweighting(prepared_tiny, tmp_path, dispatched):
    from test_extract import prompts_file

    from iclscope.methods.anchors import isolation, reweighting, saliency

    spec, model_dir = on_cpu(prepared_tiny)
    ppath, _ = prompts_file(prepared_tiny, tmp_path, n_test=4, n_train=4)
    same(
        "saliency",
        *twice(saliency, dispatched, lambda: saliency.run_saliency(ppath, model_dir, spec, 1, dataset="d")[:2]),
    )
    same(
        "isolation",
        *twice(
            isolation,
            dispatched,
            lambda: isolation.run_isolation(ppath, model_dir, spec, n_per_seed=2, ks=(1,), dataset="d")[:2],
        ),
    )
    one, many = twice(
        reweighting,
        dispatched,
        lambda: reweighting.run_reweighting(
            ppath, model_dir, spec, aux_per_class=2, epochs=2, lr=0.1, n_test_per_seed=None, dataset="d", n_boot=20
        ),
    )
    same("reweighting", one[:2], many[:2], atol=10 * ATOL)  # β is trained: float32 sums in another order


def test_anchor_compression_and_error_diagnosis(prepared_tiny, tmp_path, dispatched):
    from test_anchor_compression import three_demo_prompts

    from iclscope.methods.anchors import compression, error_diagnosis
    from iclscope.methods.anchors.compression import AnchorCompressionSettings
    from iclscope.methods.anchors.error_diagnosis import ErrorDiagnosisSettings
    from iclscope.model.extract import ExtractSettings, extract

    spec, model_dir = on_cpu(prepared_tiny)
    path, _ = three_demo_prompts(prepared_tiny, tmp_path, n_test=3)
    settings = AnchorCompressionSettings(prompts_per_seed=2, n_random_draws=2, timing_repeats=1, timing_warmup=0)
    one, many = twice(
        compression,
        dispatched,
        lambda: compression.run_anchor_compression(path, model_dir, spec, settings=settings, dataset="d3"),
    )
    same("anchor_compression", one[2], many[2])
    extract(path, model_dir, tmp_path / "act.h5", spec, ExtractSettings(store_dtype="float32", max_new_tokens=0))
    same(
        "error_diagnosis",
        *twice(
            error_diagnosis,
            dispatched,
            lambda: error_diagnosis.run_error_diagnosis(
                path,
                tmp_path / "act.h5",
                model_dir,
                spec,
                ErrorDiagnosisSettings(layer=1, n_components=2),
                dataset="d3",
            )[0],
        ),
    )


def test_patching(prepared_tiny, tmp_path, dispatched):
    from test_extract import prompts_file

    from iclscope.core.tables import read_meta, read_table, write_table
    from iclscope.methods.decodability import patching
    from iclscope.model.extract import ExtractSettings, extract

    spec, model_dir = on_cpu(prepared_tiny)
    ppath, _ = prompts_file(prepared_tiny, tmp_path, "generation")
    table = read_table(ppath)
    table["task"] = table["task"].replace({"first": "Null"})
    write_table(table, ppath, read_meta(ppath))
    extract(ppath, model_dir, tmp_path / "act.h5", spec, ExtractSettings(store_dtype="float32", max_new_tokens=3))
    same(
        "patching",
        *twice(
            patching,
            dispatched,
            lambda: patching.run_patching(
                ppath,
                tmp_path / "act.h5",
                None,
                model_dir,
                spec,
                layer=1,
                shots=None,
                mode="replace",
                max_new_tokens=3,
                dataset="d",
            )[:2],
        ),
    )


def test_icicl(prepared_tiny, dispatched):
    from test_icicl_tsft import SPEC, frame, identity_space

    from iclscope.methods.taskspace.icicl import arms
    from iclscope.methods.taskspace.icicl.evaluate import evaluate_icicl
    from iclscope.methods.taskspace.icicl.settings import ICICLSettings

    spec, model_dir = on_cpu(prepared_tiny)
    settings = ICICLSettings(
        k=2,
        pool_size=10,
        n_test=4,
        n_timed=2,
        inject_layer=1,
        embed_layer=1,
        warmup=0,
        repeats=1,
        random_draws=1,
        word_k=3,
        task_space="class_mean",
        n_boot=20,
    )
    spaces = {"class_mean": {1: identity_space(32, 1)}}
    one, many = twice(arms, dispatched, lambda: evaluate_icicl(frame(), SPEC, model_dir, spec, spaces, settings)[:2])
    same("icicl", one, many)


@pytest.mark.parametrize("stage", ["tsft", "layer_lora"])
def test_training_stages(prepared_tiny, tmp_path, dispatched, stage):
    """Without offload (the multi-GPU case) training runs through the dispatch hooks and matches; with
    blocks offloaded to cpu/disk, loading for training is refused with the reason."""
    spec, model_dir = on_cpu(prepared_tiny)
    if stage == "tsft":
        from test_icicl_tsft import SPEC, frame

        from iclscope.methods.taskspace import tsft as module
        from iclscope.methods.taskspace.tsft import TSFTSettings

        settings = TSFTSettings(
            steps=3, batch_size=4, n_train=8, n_val=4, n_test=6, checkpoint_every=10, eval_every=3, layer=1, lr=1e-2
        )

        def run(out):
            return module.train_tsft(frame(), SPEC, model_dir, spec, None, settings, out)
    else:
        from test_layer_lora import SPEC, frame

        from iclscope.methods.decodability import layer_lora as module

        settings = module.LayerLoRASettings(steps=3, batch_size=4, n_train=8, n_monitor=4, lr=1e-2)

        def run(out):
            return module.train_layer_lora(frame(), SPEC, model_dir, spec, settings, "first", out)

    runs = iter([tmp_path / "one", tmp_path / "many"])
    resident = ",".join(DEVICES) or "cpu (dispatch hooks, nothing offloaded)"
    one, many = twice(module, dispatched, lambda: run(next(runs)), mode="resident")
    logs = [pd.read_parquet(d / "train_log.parquet") for d in (tmp_path / "one", tmp_path / "many")]
    same(
        stage,
        {k: v for k, v in one.items() if isinstance(v, float | int)},
        {k: v for k, v in many.items() if isinstance(v, float | int)},
        atol=10 * ATOL,
        where=resident,
    )
    same(f"{stage} loss curve", logs[0], logs[1], atol=10 * ATOL, where=resident)
    dispatched(module, "offload")
    with pytest.raises(ConfigError, match="offloaded"):
        run(tmp_path / "offloaded")
