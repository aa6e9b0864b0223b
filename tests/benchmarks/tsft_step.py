"""TS-FT's training step on the default run's shapes (SmolLM2-135M, batches of 8 zero-shot tweets prompts,
all-linear LoRA r 16, the space loss at the middle layer): the step as TS-FT runs it (length-sorted parts
of at most TRAIN_ACTIVATION_BYTES for backward, no checkpointing) against the step of 0.4.0 (the whole
batch, gradient checkpointing on every block), interleaved on the same batches in one process, and the
process's peak resident memory (VmHWM, reset before each measured piece) against the 3 GB target.

One fresh process (its peak is the job's: imports, the model, an evaluation pass and the steps)."""

from __future__ import annotations

import json
import subprocess
import sys

from .common import MODEL, REPO, row

STEPS = 4  # steps of each variant (the medians' ratio is the row's)

CHILD = """
import json, sys, time
sys.path.insert(0, {workflow!r})
import numpy as np, torch, torch.nn.functional as F
from iclscope.core.config import DatasetSpec, ModelSpec
from iclscope.core.validate import load_config
from iclscope.core.jobs import dataset_settings
from iclscope.core.tables import read_table
from iclscope.methods.taskspace import tsft as T
from iclscope.model.blocks import input_device
from iclscope.model.capture import ATTN_IMPLEMENTATION
from iclscope.model.lora import attach_lora
from iclscope.model.prompts import label_token_ids

torch.set_num_threads(2)
def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
def reset():
    open("/proc/self/clear_refs", "w").write("5")
cfg = load_config({config!r})
model = ModelSpec.from_config({model!r}, cfg["models"][{model!r}])
spec = DatasetSpec.from_config("tweets", dataset_settings(cfg, "tweets"))
ts = {{k: v for k, v in cfg["tsft"].items() if k not in ("enabled", "task_space", "seeds")}}
settings = T.TSFTSettings(**ts, seed=0)
base, tok, manifest = T.load_model({model_dir!r}, model, attn_implementation=ATTN_IMPLEMENTATION)
peaks = [peak()]
L = manifest["n_layers"]
labels = torch.as_tensor(label_token_ids(tok, spec.label_words, spec.prompts.template), device=input_device(base))
train_rows, val_rows, _ = T.tsft_rows(read_table({dataset!r}), spec, settings)
train, val = T.zero_shot_examples(tok, spec, train_rows), T.zero_shot_examples(tok, spec, val_rows)
d = base.config.hidden_size
space = (torch.eye(d)[:1], torch.zeros(d), torch.tensor([[-1.0], [1.0]]))
reset()
with torch.inference_mode():
    T.evaluate_examples(base, tok, val, labels, L // 2, L, space, 0.1, "distance", model.batch_size,
                        model.max_batch_tokens)
peaks.append(peak())
part_tokens = T.TRAIN_ACTIVATION_BYTES // T.activation_bytes_per_token(base.config)
torch.manual_seed(0)
net = attach_lora(base, r=settings.lora_r, alpha=settings.lora_alpha, dropout=settings.lora_dropout)
inner = net.base_model.model
net.train()
order = np.random.default_rng((0, 0)).permutation(len(train))

def checkpointed(batch):
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{"use_reentrant": False}})
    net.train()
    gold = torch.as_tensor([x["gold"] for x in batch])
    logits, h = T.forward_batch(net, tok, batch, labels, L // 2, L)
    (F.cross_entropy(logits, gold) + settings.lam * T.space_loss(h, *space, gold, settings.tau)).backward()

def parts(batch):
    inner.gradient_checkpointing_disable()
    net.train()
    T.accumulate_gradients(net, tok, batch, labels, L // 2, L, space, settings, part_tokens)

times = {{"checkpointed": [], "parts": []}}
part_peaks = []
for step in range({steps}):
    batch = [train[i] for i in order[step * 8 : (step + 1) * 8]]
    for name in ("checkpointed", "parts") if step % 2 == 0 else ("parts", "checkpointed"):
        net.zero_grad(set_to_none=True)
        reset()
        t = time.perf_counter()
        (checkpointed if name == "checkpointed" else parts)(batch)
        times[name].append(time.perf_counter() - t)
        if name == "parts":
            part_peaks.append(peak())
print(json.dumps({{"times": times, "peak_mb": max(peaks + part_peaks), "part_tokens": int(part_tokens)}}))
"""


def run() -> list[dict]:
    import numpy as np

    dataset = REPO / "results" / "datasets" / "tweets.parquet"
    if not dataset.exists():
        return [row("tsft", "training step", 0, "-", note=f"{dataset} missing: run `make run` first")]
    code = CHILD.format(
        workflow=str(REPO / "workflow"),
        config=str(REPO / "config.yaml"),
        model=MODEL,
        model_dir=str(REPO / "results" / "models" / MODEL),
        dataset=str(dataset),
        steps=STEPS,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = (float(np.median(res["times"][k])) for k in ("checkpointed", "parts"))
    return [
        row(
            "tsft",
            f"training step (batch 8, parts of <= {res['part_tokens']} tokens, no checkpointing)",
            after,
            "s",
            "whole batch, checkpointed blocks",
            before / after,
            note=f"median of {STEPS} interleaved steps each (ratio = speed-up)",
        ),
        row(
            "tsft",
            "peak resident memory (model, evaluation pass, training steps)",
            res["peak_mb"] / 1024,
            "GB",
            target="<= 3 GB",
            met=res["peak_mb"] <= 3 * 1024,
        ),
    ]
