"""The typed settings of an AutoModel-backend run (imported by recipes/config.py, where the whole schema lives).

``conf/hf_model/<name>.yaml`` (the ``model`` of an AutoModel recipe) is one published complete VLM: its family, the
published processor settings, the module names of its parts (what ``recipe.train`` freezes and
``optim.vision_lr_mult`` scales) and the dimensions the layout checks need before any checkpoint is read.
``model.hf_path`` is the checkpoint folder the run reads (a download of the published model, a tiny random one in
tests, or a previous run's consolidated output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

HF_FAMILIES = ("gemma3", "qwen2_5_vl", "qwen3_vl", "nemotron_nano_vl")
PEFT_METHODS = ("none", "lora")
PAN_AND_SCAN_DEFAULTS = {"pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                         "pan_and_scan_min_ratio_to_activate": 1.2}  # Gemma3Processor's published defaults


@dataclass
class HFProcessorConfig:
    """How images reach the model: the checkpoint's processor, called with ``call_kwargs()`` at training and at
    inference (``ecomvlm eval --backend hf``, ``HFBackend(processor_kwargs=...)``)."""

    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to every processor call
    # Gemma3 pan & scan (Table 3 row 40): extra crops of images whose aspect ratio is at least min_ratio
    pan_and_scan: bool = False
    pan_and_scan_min_crop_size: int = 256
    pan_and_scan_max_num_crops: int = 4
    pan_and_scan_min_ratio_to_activate: float = 1.2
    # the released checkpoint's processor settings (its preprocessor_config.json); a run reports where the folder
    # it reads differs (the folder wins: these are the record of what the paper's model used)
    published: dict[str, Any] = field(default_factory=dict)

    def call_kwargs(self) -> dict[str, Any]:
        out = dict(self.kwargs)
        if self.pan_and_scan:
            out.update(do_pan_and_scan=True, pan_and_scan_min_crop_size=self.pan_and_scan_min_crop_size,
                       pan_and_scan_max_num_crops=self.pan_and_scan_max_num_crops,
                       pan_and_scan_min_ratio_to_activate=self.pan_and_scan_min_ratio_to_activate)
        return out


@dataclass
class HFPartsConfig:
    """Module-name globs (fnmatch on module paths) of the model's parts; a trained part inside a frozen one wins."""

    encoder: list[str] = field(default_factory=list)
    projector: list[str] = field(default_factory=list)
    decoder: list[str] = field(default_factory=list)


@dataclass
class HFVLMConfig:
    """conf/hf_model/<name>.yaml: one published complete VLM (the ``model`` of an AutoModel recipe)."""

    name: str = "hf_vlm"
    family: str = MISSING  # gemma3 | qwen2_5_vl | qwen3_vl | nemotron_nano_vl
    paper_rows: list[int] = field(default_factory=list)
    hub_id: str = ""  # the published checkpoint this config describes (nothing is downloaded)
    hf_path: str = MISSING  # the checkpoint folder a run reads
    trust_remote_code: bool = False  # checkpoints that ship their modeling code (Nemotron-Nano-VL)
    force_hf: bool = False  # keep transformers' model class where AutoModel has its own (dense Qwen3-VL)
    attn_implementation: str = "sdpa"
    parts: HFPartsConfig = field(default_factory=HFPartsConfig)
    processor: HFProcessorConfig = field(default_factory=HFProcessorConfig)
    # published dimensions: layout checks (TP divides heads, ...) at dry-run/launch time, before any download
    num_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    params_b: float | None = None  # billions of parameters (memory estimates in the dry-run plan)
    # the published config.json's architecture (text_config / vision_config / top-level keys as transformers names
    # them): builds the published model on the meta device (tests, recipes/automodel/geometry.py) and is compared
    # with the checkpoint a run reads (differences are reported, the folder wins)
    geometry: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in HF_FAMILIES and self.family != MISSING:
            raise ValueError(f"model.family={self.family!r}: choose one of {HF_FAMILIES}")

    @property
    def decoder(self) -> "DecoderDims":
        """The decoder's layout dimensions under the names the shared layout checks read (``ecomvlm train
        --dry-run``, ``ecomvlm launch``: TP must divide the heads, PP the layers)."""
        return DecoderDims(self.num_attention_heads, self.num_key_value_heads, self.num_layers)


@dataclass(frozen=True)
class DecoderDims:
    num_attention_heads: int | None
    num_query_groups: int | None
    num_layers: int | None


@dataclass
class PeftConfig:
    """``peft=lora``: LoRA adapters (AutoModel's PeftConfig) instead of full fine-tuning; the result is an HF PEFT
    adapter folder."""

    method: str = "none"  # none | lora
    dim: int = 8
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)  # globs on module paths; empty: all linear layers ...
    exclude_modules: list[str] = field(default_factory=list)  # ... except these

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ValueError(f"peft.method={self.method!r}: choose one of {PEFT_METHODS}")
        if self.target_modules and self.exclude_modules:
            raise ValueError("peft.target_modules and peft.exclude_modules are exclusive: set one")


@dataclass
class AutoModelConfig:
    """Settings only the AutoModel backend has (everything else comes from the shared groups: parallel sets TP/CP,
    precision the dtypes, data/optim/trainer the rest)."""

    activation_checkpointing: bool = False
    dp_replicate_size: int | None = None  # HSDP: replicate over this many groups, shard inside each (multi-node)
    save_consolidated: str = "final"  # final | every: which checkpoints also get the consolidated HF folder
    max_recent_checkpoints: int | None = None  # keep only the newest N checkpoints (None: keep all)
    dist_timeout_minutes: int = 30
    loss: str = "masked_ce"  # masked_ce | chunked_ce (long vocabularies, GPU)
    # extra AutoModel config keys merged last (dotted keys, e.g. {"distributed.enable_fsdp2_prefetch": true})
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.save_consolidated not in ("final", "every"):
            raise ValueError(f"automodel.save_consolidated={self.save_consolidated!r}: choose final or every")
        if self.loss not in ("masked_ce", "chunked_ce"):
            raise ValueError(f"automodel.loss={self.loss!r}: choose masked_ce or chunked_ce")
