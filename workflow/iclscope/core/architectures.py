"""Which causal LMs iclscope's hook layer supports, and why the others are refused.

Torch-free (the Snakefile imports it while it is parsed): a plain table of transformers 5.23
architectures. `check_supported(architecture)` refuses an unsupported one up front, before any
work, with the reason and the supported list; `models.prepare_model` calls it on the loaded
config, and config-time validation can call it on a model's declared architecture.

Each supported architecture takes one of two paths into the hook layer (iclscope.model.capture;
the paths are iclscope.model.attention.interface and iclscope.model.attention.adapters):

* "interface": its attention modules call an AttentionInterface function; iclscope's
  ("iclscope") reads and edits it. Scale, soft-capping, sliding windows and attention sinks
  arrive as the function's arguments and are applied as the model's own eager attention does.
* "adapter": its attention is computed inline (GPT-J, CodeGen, GPT-Neo, Falcon, Bloom, MPT,
  XGLM); the
  model is loaded with eager attention and `attention.adapters.install_adapters` swaps the score/softmax
  step of each attention module for one that computes the same and calls the same reads/edits.

`verified` marks the architectures of the support matrix (tests/unit/test_architectures.py):
residuals, label logits, recorded attention rows, isolation and re-weighting edits and KV
continuation checked against the unmodified model's eager forward on a tiny random model.
A row with verified=False ("supported (untested)") would share a path without being in the matrix;
today every supported row is verified.
"""

from __future__ import annotations

from dataclasses import dataclass

from iclscope.core.config import ConfigError


@dataclass(frozen=True)
class Support:
    """One row of the support table."""

    architecture: str  # the *ForCausalLM class name (config.architectures[0])
    model_type: str  # config.model_type
    hook: str  # "interface" | "adapter" | "refused"
    verified: bool = False
    reason: str = ""
    # config key -> (value that is refused, reason): a supported architecture with a refused variant
    refused_when: tuple[tuple[str, object, str], ...] = ()

    @property
    def status(self) -> str:
        if self.hook == "refused":
            return "refused"
        return "supported" if self.verified else "supported (untested)"


def _interface(arch: str, model_type: str, verified: bool = False, reason: str = "") -> Support:
    return Support(arch, model_type, "interface", verified, reason or "AttentionInterface")


def _adapter(arch: str, model_type: str, reason: str, **kw) -> Support:
    return Support(arch, model_type, "adapter", True, reason, **kw)


def _refused(arch: str, model_type: str, reason: str) -> Support:
    return Support(arch, model_type, "refused", False, reason)


NO_ATTENTION = (
    "no softmax attention (a state-space / recurrent model): there is no attention for the anchor "
    "methods to read or edit"
)
HYBRID = (
    "blocks without softmax attention (hybrid state-space / linear-attention model): per-layer attention "
    "reads and edits (saliency, isolation, re-weighting, anchor KV) need attention in every block"
)
NOT_DECODER = (
    "not a decoder-only language model (an encoder or encoder-decoder with a causal-LM head): iclscope "
    "reads prompts as one left-padded causal sequence"
)
NO_ADAPTER = (
    "attention computed inline, outside transformers' AttentionInterface, and iclscope has no adapter "
    "for this attention module yet"
)

SUPPORT_TABLE: tuple[Support, ...] = (
    # ---------------------------------------------------------------- verified, AttentionInterface
    _interface("GPT2LMHeadModel", "gpt2", True),
    _interface("GPTNeoXForCausalLM", "gpt_neox", True),
    _interface("LlamaForCausalLM", "llama", True),
    _interface("MistralForCausalLM", "mistral", True, "AttentionInterface; sliding window in the mask"),
    _interface("MixtralForCausalLM", "mixtral", True, "AttentionInterface; sliding window in the mask"),
    _interface("Qwen2ForCausalLM", "qwen2", True),
    _interface("Qwen3ForCausalLM", "qwen3", True),
    _interface("GemmaForCausalLM", "gemma", True),
    _interface(
        "Gemma2ForCausalLM",
        "gemma2",
        True,
        "AttentionInterface; attention soft-capping and query_pre_attn_scalar applied in eager attention "
        "(SDPA cannot soft-cap), sliding window in the mask",
    ),
    _interface("Gemma3ForCausalLM", "gemma3_text", True, "AttentionInterface; sliding window in the mask"),
    _interface("Phi3ForCausalLM", "phi3", True),
    _interface("Olmo2ForCausalLM", "olmo2", True),
    _interface("OPTForCausalLM", "opt", True),
    _interface("StableLmForCausalLM", "stablelm", True),
    _interface("GraniteForCausalLM", "granite", True, "AttentionInterface; attention_multiplier as scaling"),
    _interface(
        "GptOssForCausalLM",
        "gpt_oss",
        True,
        "AttentionInterface; attention sinks applied in eager attention, sliding window in the mask",
    ),
    # ---------------------------------------------------------------- verified, adapters
    _adapter("GPTJForCausalLM", "gptj", "adapter on GPTJAttention._attn (eager)"),
    _adapter("CodeGenForCausalLM", "codegen", "adapter on CodeGenAttention._attn (eager)"),
    _adapter("GPTNeoForCausalLM", "gpt_neo", "adapter on GPTNeoSelfAttention._attn (eager; local window mask)"),
    _adapter(
        "FalconForCausalLM",
        "falcon",
        "adapter on FalconAttention.forward (eager; rotary Falcons)",
        refused_when=(
            (
                "alibi",
                True,
                "ALiBi Falcon (config.alibi=True, e.g. falcon-rw): transformers 5.23's eager Falcon "
                "attention adds ALiBi twice and its SDPA path once (their logits differ), so there is "
                "no single attention to reproduce; rotary Falcons (falcon-7b/40b/180b, Falcon 2) "
                "are supported",
            ),
        ),
    ),
    _adapter("BloomForCausalLM", "bloom", "adapter on BloomAttention.forward (eager; ALiBi as a score bias)"),
    _adapter("MptForCausalLM", "mpt", "adapter on MptAttention.forward (eager; ALiBi position bias, clip_qkv)"),
    _adapter("XGLMForCausalLM", "xglm", "adapter on XGLMAttention.forward (eager)"),
    *(
        _interface(arch, mt, True)
        for arch, mt in (
            ("PhiForCausalLM", "phi"),
            ("Qwen2MoeForCausalLM", "qwen2_moe"),
            ("Qwen3MoeForCausalLM", "qwen3_moe"),
            ("OlmoForCausalLM", "olmo"),
            ("Olmo3ForCausalLM", "olmo3"),
            ("OlmoeForCausalLM", "olmoe"),
            ("CohereForCausalLM", "cohere"),
            ("GPTBigCodeForCausalLM", "gpt_bigcode"),
            ("PersimmonForCausalLM", "persimmon"),
            ("SmolLM3ForCausalLM", "smollm3"),
            ("GraniteMoeForCausalLM", "granitemoe"),
            ("GraniteMoeSharedForCausalLM", "granitemoeshared"),
            ("HeliumForCausalLM", "helium"),
            ("GlmForCausalLM", "glm"),
            ("Glm4ForCausalLM", "glm4"),
            ("NemotronForCausalLM", "nemotron"),
            ("ArceeForCausalLM", "arcee"),
            ("ApertusForCausalLM", "apertus"),
            ("SeedOssForCausalLM", "seed_oss"),
            ("Exaone4ForCausalLM", "exaone4"),
            ("PhimoeForCausalLM", "phimoe"),
            ("HunYuanDenseV1ForCausalLM", "hunyuan_v1_dense"),
            ("BioGptForCausalLM", "biogpt"),
        )
    ),
    _interface("MinistralForCausalLM", "ministral", True, "AttentionInterface; sliding window in the mask"),
    _interface("Cohere2ForCausalLM", "cohere2", True, "AttentionInterface; sliding window in the mask"),
    _interface("Starcoder2ForCausalLM", "starcoder2", True, "AttentionInterface; sliding window in the mask"),
    _interface(
        "VaultGemmaForCausalLM",
        "vaultgemma",
        True,
        "AttentionInterface; attention soft-capping applied in eager attention, sliding window in the mask",
    ),
    _interface("DeepseekV2ForCausalLM", "deepseek_v2", True, "AttentionInterface; multi-head latent attention"),
    _interface("DeepseekV3ForCausalLM", "deepseek_v3", True, "AttentionInterface; multi-head latent attention"),
    _interface("DbrxForCausalLM", "dbrx", True, "AttentionInterface; clip_qkv before the attention function"),
    # ---------------------------------------------------------------- refused
    _refused("FalconMambaForCausalLM", "falcon_mamba", NO_ATTENTION),
    _refused("MambaForCausalLM", "mamba", NO_ATTENTION),
    _refused("Mamba2ForCausalLM", "mamba2", NO_ATTENTION),
    _refused("RwkvForCausalLM", "rwkv", NO_ATTENTION),
    _refused("xLSTMForCausalLM", "xlstm", NO_ATTENTION),
    *(
        _refused(arch, mt, HYBRID)
        for arch, mt in (
            ("JambaForCausalLM", "jamba"),
            ("ZambaForCausalLM", "zamba"),
            ("Zamba2ForCausalLM", "zamba2"),
            ("BambaForCausalLM", "bamba"),
            ("FalconH1ForCausalLM", "falcon_h1"),
            ("GraniteMoeHybridForCausalLM", "granitemoehybrid"),
            ("Lfm2ForCausalLM", "lfm2"),
            ("Lfm2MoeForCausalLM", "lfm2_moe"),
            ("Qwen3NextForCausalLM", "qwen3_next"),
            ("NemotronHForCausalLM", "nemotron_h"),
            ("RecurrentGemmaForCausalLM", "recurrent_gemma"),
            ("MiniMaxForCausalLM", "minimax"),
            ("KimiLinearForCausalLM", "kimi_linear"),
            ("OlmoHybridForCausalLM", "olmo_hybrid"),
        )
    ),
    _refused("GPTNeoXJapaneseForCausalLM", "gpt_neox_japanese", NO_ADAPTER + " (GPTNeoXJapaneseAttention)"),
    _refused("CpmAntForCausalLM", "cpmant", NO_ADAPTER + " (CpmAntAttention, relative position bias)"),
    _refused(
        "JetMoeForCausalLM",
        "jetmoe",
        "mixture-of-attention heads: each token's attention has "
        "num_key_value_heads × num_experts_per_tok heads, not "
        "num_attention_heads, so the per-head arrays (attention rows, β "
        "[L, H, K]) do not fit",
    ),
    _refused(
        "FuyuForCausalLM", "fuyu", "a multimodal model (image patches + text): iclscope reads text-only causal LMs"
    ),
    *(
        _refused(arch, mt, NOT_DECODER)
        for arch, mt in (
            ("BertLMHeadModel", "bert"),
            ("RobertaForCausalLM", "roberta"),
            ("XLMRobertaForCausalLM", "xlm-roberta"),
            ("BigBirdForCausalLM", "big_bird"),
            ("MegatronBertForCausalLM", "megatron-bert"),
            ("RemBertForCausalLM", "rembert"),
            ("RoFormerForCausalLM", "roformer"),
            ("ProphetNetForCausalLM", "prophetnet"),
            ("MvpForCausalLM", "mvp"),
            ("TrOCRForCausalLM", "trocr"),
            ("BartForCausalLM", "bart"),
            ("MBartForCausalLM", "mbart"),
            ("MarianForCausalLM", "marian"),
            ("PegasusForCausalLM", "pegasus"),
            ("BlenderbotForCausalLM", "blenderbot"),
            ("WhisperForCausalLM", "whisper"),
            ("ElectraForCausalLM", "electra"),
            ("ClvpForCausalLM", "clvp"),
        )
    ),
)

_BY_NAME = {s.architecture: s for s in SUPPORT_TABLE}
_BY_TYPE = {s.model_type: s for s in SUPPORT_TABLE}


def lookup(architecture: str) -> Support | None:
    """The table row of an architecture class name ("LlamaForCausalLM") or model_type ("llama")."""
    return _BY_NAME.get(architecture) or _BY_TYPE.get(architecture)


def supported_names() -> list[str]:
    """Class names of the supported architectures, verified ones first."""
    rows = [s for s in SUPPORT_TABLE if s.hook != "refused"]
    return [s.architecture for s in sorted(rows, key=lambda s: not s.verified)]


def check_supported(architecture: str, config: dict | None = None) -> Support:
    """Refuse an architecture the hook layer cannot read faithfully; return its table row otherwise.

    `architecture` is a *ForCausalLM class name or a model_type; `config` (optional, a
    transformers config as a dict) also refuses unsupported variants of a supported architecture
    (ALiBi Falcon). Raises ConfigError naming the architecture, the reason and the supported list.
    """
    row = lookup(architecture)
    if row is None:
        reason = (
            "not in iclscope's support table for transformers 5.23, so nothing says its attention reaches "
            "the hook layer (an unknown module would silently record nothing and ignore the edits)"
        )
    elif row.hook == "refused":
        reason = row.reason
    else:
        reason = next(
            (why for key, value, why in row.refused_when if config is not None and config.get(key) == value), None
        )
        if reason is None:
            return row
    verified = [s.architecture for s in SUPPORT_TABLE if s.hook != "refused" and s.verified]
    untested = [s.architecture for s in SUPPORT_TABLE if s.hook != "refused" and not s.verified]
    also = f"; supported, untested: {', '.join(untested)}" if untested else ""
    raise ConfigError(
        f"model architecture '{architecture}' is not supported by iclscope: {reason}. Supported "
        f"(verified by tests/unit/test_architectures.py): {', '.join(verified)}{also}"
    )


def attention_hook(architecture: str) -> str:
    """ "interface" or "adapter" for a supported architecture (class name or model_type); "interface"
    for one not in the table (capture's AttentionInterface path is the default)."""
    row = lookup(architecture)
    return row.hook if row is not None and row.hook != "refused" else "interface"


def markdown_table() -> str:
    """The support table as markdown (architecture | model_type | status | path / reason), for the README."""
    lines = ["| architecture | model_type | status | path / reason |", "|---|---|---|---|"]
    for s in SUPPORT_TABLE:
        lines.append(f"| {s.architecture} | {s.model_type} | {s.status} | {s.reason} |")
        for key, value, why in s.refused_when:
            lines.append(f"| {s.architecture} ({key}={value}) | {s.model_type} | refused | {why} |")
    return "\n".join(lines)
