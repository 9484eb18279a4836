"""The one typed schema of a training run, and the one place its defaults live.

A run's config is put together in this order; each step overrides the ones before it (lowest -> highest):

  1. the dataclass defaults below (and those of the model families, recipes/models/*/, and of
     data_modules/config.py: the only places defaults are written);
  2. the groups chosen by conf/train.yaml's defaults list: ``model`` (conf/model/<encoder>_<decoder>.yaml, which
     picks conf/model/{encoder,decoder,projector}/*.yaml), ``parallel``, ``precision``, ``recipe`` (the stage:
     conf/recipe/<stage>.yaml sets what is trained and the stage's optimiser settings);
  3. the named recipe (conf/<model>_<stage>.yaml: a paper row x stage), which swaps groups and sets what differs;
  4. ``key=value`` overrides on the command line (``ecomvlm train RECIPE key=value ...``; ``group=option`` swaps
     a group, e.g. ``model/decoder=tiny_qwen3``).
``${...}`` interpolations (e.g. ``run.dir: runs/${run.name}``) are resolved after all of them. Every key is
typed: an unknown key or a value of the wrong type fails at composition, naming the key.

Two training backends, chosen per recipe by ``backend``:

- ``megatron`` (:class:`TrainConfig`, ``train_schema``): our composed encoder x decoder VLMs (recipes/vlm_train.py);
- ``automodel`` (:class:`AutoModelTrainConfig`, ``automodel_train_schema``): complete HF VLMs (Gemma3, Qwen2.5-VL,
  Qwen3-VL, Nemotron-Nano-VL) fine-tuned with NeMo AutoModel (recipes/automodel/). Its ``model`` is a
  conf/hf_model/<name>.yaml (:class:`~ecomvlm.recipes.automodel.schema.HFVLMConfig`, ``model.hf_path`` = the
  checkpoint folder) and it adds ``automodel`` (FSDP2 and checkpoint settings) and ``peft`` (``peft=lora``); the
  shared groups keep their meaning (``parallel``: TP/CP, FSDP2 over the rest; ``precision``: bf16 compute with fp32
  master weights, or fp32; ``data``/``optim``/``trainer``/``recipe``/``run``). Its recipes
  (conf/<model>_item_intel_ft.yaml for gemma3_4b/12b/27b, qwen2_5_vl_7b, qwen3_vl_8b, nemotron_nano_vl_8b) start
  their defaults list with ``automodel_train_schema`` and ``hf_model@model: <name>``, then the shared groups and
  ``peft: none``; recipes/vlm_train.py's ``run`` dispatches on ``backend``.

Hydra's ConfigStore holds the schema (``train_schema``) and one schema per model family (``schema/decoder/<family>``,
``schema/encoder/<family>``, which the YAML files of conf/model/{encoder,decoder} name in their defaults list).
:func:`load` composes and returns a :class:`TrainConfig` object (``OmegaConf.to_object``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING, DictConfig, OmegaConf

from ecomvlm.data_modules.config import DataConfig
from ecomvlm.recipes.automodel.schema import AutoModelConfig, HFVLMConfig, PeftConfig
from ecomvlm.recipes.models.parallel import ParallelConfig
from ecomvlm.recipes.models.precision import PrecisionConfig
from ecomvlm.recipes.models.registry import DECODERS, ENCODERS, VLMConfig

CONF_MODULE = "ecomvlm.conf"


@dataclass
class RunConfig:
    name: str = "${model.name}_${recipe.stage}"
    dir: str = "runs/${run.name}"  # checkpoints/, tb/, config.json, summary.json; an existing run dir is resumed
    seed: int = 1234
    note: str = ""  # free text kept in config.json (what the run is for)


@dataclass
class TokenizerConfig:
    path: str = MISSING  # HF tokenizer dir with a chat template and an "<image>" token


@dataclass
class InitConfig:
    """Where weights come from when the run dir has no checkpoint yet (first match wins)."""

    from_checkpoint: str | None = None  # an ecomvlm checkpoint or run dir (stage 2 <- stage 1, ...), any TP/PP
    hf_llava: str | None = None  # an HF LLaVA directory
    hf_decoder: str | None = II("model.decoder.hf_path")  # or HF backbones: the LLM + the vision tower
    hf_encoder: str | None = II("model.encoder.hf_path")  # (the projector then starts random)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    min_lr: float = 0.0
    vision_lr_mult: float = 0.2  # LLaVA-OneVision trains the vision tower at 1/5 of the LLM learning rate
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 30
    clip_grad: float = 1.0


@dataclass
class WandbConfig:
    """Weights & Biases beside TensorBoard (recipes/wandb_logging.py); the key from WANDB_API_KEY, never a file."""

    enabled: bool = False
    project: str = "ecomvlm"
    entity: str | None = None
    mode: str = "online"  # online | offline (<run.dir>/wandb, `wandb sync` later) | disabled

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"trainer.wandb.mode={self.mode!r}: choose online, offline or disabled")


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    log_every: int = 10  # a progress line (loss, lr, tokens/s, ETA) on stdout and TensorBoard points
    save_every: int = 500  # checkpoint interval (also on the last step and on the pre-emption signal)
    distributed_optimizer: bool = False  # ZeRO-1: optimizer state and fp32 master weights sharded over DP
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RecipeConfig:
    stage: str = MISSING  # stage1_alignment | stage2_mid | stage3_sft | item_intel_ft
    train: list[str] = MISSING  # parts that learn: projector, encoder, decoder


@dataclass
class ExportConfig:
    hf_dir: str | None = None  # single-process runs: also write an HF LLaVA directory at the end


BACKENDS = ("megatron", "automodel")


@dataclass
class TrainConfig:
    backend: str = "megatron"  # megatron: composed VLMs (this schema) | automodel: AutoModelTrainConfig
    model: VLMConfig = MISSING
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {BACKENDS}")
        if self.backend != "megatron":
            raise ValueError(f"backend={self.backend}: this recipe's model is a composed encoder x decoder VLM, which "
                             f"trains on the megatron backend; the automodel backend fine-tunes complete HF VLMs "
                             f"(recipes whose model is conf/hf_model/*.yaml, e.g. gemma3_4b_item_intel_ft)")


@dataclass
class HFInitConfig:
    """Where an AutoModel run's weights come from when its run dir has no checkpoint yet."""

    from_checkpoint: str | None = None  # a finished AutoModel run dir (its hf/ result) or an HF folder; else hf_path


@dataclass
class AutoModelTrainConfig(TrainConfig):
    """A run of the AutoModel backend (recipes/automodel/): a complete HF VLM, FSDP2 (+TP/CP), our data and run dir."""

    backend: str = "automodel"
    model: HFVLMConfig = MISSING
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(path="${model.hf_path}"))
    init: HFInitConfig = field(default_factory=HFInitConfig)
    automodel: AutoModelConfig = field(default_factory=AutoModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def __post_init__(self) -> None:
        if self.backend != "automodel":
            raise ValueError(f"backend={self.backend}: this recipe's model is a complete HF VLM "
                             f"(conf/hf_model/{self.model.name}), which trains on the automodel backend only")


_registered = False


def register() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="automodel_train_schema", node=AutoModelTrainConfig)
    for family, klass in DECODERS.items():
        cs.store(group="schema/decoder", name=family, node=klass)
    for family, klass in ENCODERS.items():
        cs.store(group="schema/encoder", name=family, node=klass)
    _registered = True


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config exactly as the Hydra app would (same search path, same overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def missing_settings(cfg: DictConfig) -> list[str]:
    return sorted(OmegaConf.missing_keys(cfg))


def unknown_settings(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys the schema does not have (Hydra's ``+key=value`` can add them to a typed node)."""
    import dataclasses

    out: list[str] = []
    kind = OmegaConf.get_type(cfg)
    known = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else None
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            out.append(path)
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            out += unknown_settings(node, path + ".")
    return out


def to_config(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """A composed config -> TrainConfig. Required settings left at ``???`` are named in one error."""
    if isinstance(cfg, TrainConfig):
        return cfg
    unknown = unknown_settings(cfg)
    if unknown:
        raise ValueError(f"unknown settings {unknown}: the training schema (recipes/config.py) has no such keys")
    missing = missing_settings(cfg)
    if missing:
        raise ValueError(f"missing required settings: {', '.join(missing)}; pass them as key=value overrides "
                         f"(e.g. {missing[0]}=...)")
    return OmegaConf.to_object(cfg)


def load(config_name: str = "train", overrides: list[str] | None = None) -> TrainConfig:
    return to_config(compose(config_name, overrides))


def model_config(overrides: list[str] | None = None, config_name: str = "train") -> VLMConfig:
    """Only the model of a composed config (no tokenizer / data settings needed)."""
    return OmegaConf.to_object(compose(config_name, overrides).model)


def as_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-JSON view of a config (config.json of a run, checkpoint meta)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
