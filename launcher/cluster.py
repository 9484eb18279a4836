"""Cluster configs (conf/cluster/<name>.yaml): typed, checked field by field when loaded.

A value of the wrong type, a control character (a newline would become a line of the sbatch script) or a count
below its minimum fails here with one line naming the file, the field and what to write instead.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "conf" / "cluster"

# Exported into every job (a cluster's `env:` overrides them; `NAME: null` drops one). The same defaults as
# NeMo-Run / Megatron-Bridge's SLURM executors: unbuffered Python so SLURM logs keep up with training, and their
# NCCL / torch settings. CUDA_DEVICE_MAX_CONNECTIONS=1 is added per job when TP or CP > 1 (megatron overlaps TP
# communication with compute only then; launcher.plan).
DEFAULT_ENV: dict[str, str] = {
    "PYTHONUNBUFFERED": "1",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    "TORCH_NCCL_HIGH_PRIORITY": "1",
    "NCCL_NVLS_ENABLE": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_OFFLINE": "1",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIME_RE = re.compile(r"(\d+)|(\d+):(\d{1,2})|(\d+):(\d{1,2}):(\d{1,2})|(\d+)-(\d+)(?::(\d{1,2})(?::(\d{1,2}))?)?")
_PARTITION_RE = re.compile(r"[A-Za-z0-9_.,-]+")
_MEM_RE = re.compile(r"\d+[KMGT]?")


@dataclasses.dataclass
class ClusterConfig:
    partition: str | None = None
    account: str | None = None
    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # default: one per GPU
    cpus_per_task: int | None = None
    mem: str | int | None = None
    time: str = "04:00:00"
    container_image: str | None = None
    container_mounts: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)
    python: str | None = None
    log_dir: str = "logs/slurm"
    runs_root: str = "runs"
    requeue: bool = True
    max_requeues: int = 3
    signal_seconds: int = 120
    extra_sbatch: list[str] = dataclasses.field(default_factory=list)
    # data stages (`ecomvlm launch data ...`, launcher/data.py): one CPU process per array task calling endpoints;
    # null = the training value above (partition, cpus_per_task, time). No GPU, no --mem and none of
    # extra_sbatch (e.g. --exclusive) unless set here.
    data_partition: str | None = None
    data_cpus_per_task: int | None = None
    data_gpus_per_node: int = 0
    data_mem: str | int | None = None
    data_time: str | None = None
    data_extra_sbatch: list[str] = dataclasses.field(default_factory=list)
    source: str = dataclasses.field(default="<defaults>", compare=False)  # where it was loaded from (for errors)

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    def job_env(self) -> dict[str, str]:
        env = {**DEFAULT_ENV, **{k: v for k, v in self.env.items()}}
        return {k: str(v) for k, v in env.items() if v is not None}


# field -> (accepted types, what to write, minimum for counts)
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "partition": ((str,), "a partition name, e.g. partition: batch"),
    "account": ((str,), "an account name, e.g. account: my_project"),
    "nodes": ((int,), "a whole number >= 1, e.g. nodes: 2"),
    "gpus_per_node": ((int,), "a whole number >= 0, e.g. gpus_per_node: 8"),
    "tasks_per_node": ((int,), "a whole number >= 1 (or null: one task per GPU), e.g. tasks_per_node: 2"),
    "cpus_per_task": ((int,), "a whole number >= 1, e.g. cpus_per_task: 16"),
    "mem": ((int, str), "megabytes or a size with a unit, e.g. mem: 0 (all of the node) or mem: 512G"),
    "time": ((str,), 'a SLURM time limit in quotes, e.g. time: "04:00:00" or time: "2-00:00:00"'),
    "container_image": ((str,), "an image for pyxis, e.g. container_image: /lustre/images/ecomvlm.sqsh"),
    "container_mounts": ((list,), 'a list of SRC:DST mounts, e.g. container_mounts: ["/lustre:/lustre"]'),
    "env": ((dict,), 'a mapping of variable names to values, e.g. env: {NCCL_DEBUG: WARN}'),
    "python": ((str,), "the interpreter the job runs, e.g. python: python"),
    "log_dir": ((str,), "a folder, e.g. log_dir: logs/slurm"),
    "runs_root": ((str,), "a folder, e.g. runs_root: runs"),
    "requeue": ((bool,), "true or false"),
    "max_requeues": ((int,), "a whole number >= 0, e.g. max_requeues: 3"),
    "signal_seconds": ((int,), "seconds >= 1 before the time limit, e.g. signal_seconds: 300"),
    "extra_sbatch": ((list,), 'a list of sbatch options, e.g. extra_sbatch: ["--exclusive"]'),
    "data_partition": ((str,), "the partition of data-stage jobs, e.g. data_partition: cpu"),
    "data_cpus_per_task": ((int,), "a whole number >= 1, e.g. data_cpus_per_task: 4"),
    "data_gpus_per_node": ((int,), "a whole number >= 0 (0: data stages ask for no GPU), e.g. data_gpus_per_node: 0"),
    "data_mem": ((int, str), "megabytes or a size with a unit, e.g. data_mem: 16G"),
    "data_time": ((str,), 'a SLURM time limit in quotes, e.g. data_time: "12:00:00"'),
    "data_extra_sbatch": ((list,), 'a list of sbatch options for data-stage jobs, e.g. data_extra_sbatch: '
                                   '["--qos=cpu"]'),
}
_MINIMUM = {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "max_requeues": 0,
            "signal_seconds": 1, "data_cpus_per_task": 1, "data_gpus_per_node": 0}
_REQUIRED = {"nodes", "gpus_per_node", "time", "log_dir", "runs_root", "requeue", "max_requeues", "signal_seconds",
             "data_gpus_per_node", "data_extra_sbatch"}


def time_limit_seconds(t: str) -> int | None:
    """SLURM time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> seconds; None if not one."""
    m = _TIME_RE.fullmatch(t)
    if not m:
        return None
    g = m.groups()
    if g[0] is not None:
        return int(g[0]) * 60
    if g[1] is not None:
        return int(g[1]) * 60 + int(g[2])
    if g[3] is not None:
        return int(g[3]) * 3600 + int(g[4]) * 60 + int(g[5])
    return int(g[6]) * 86400 + int(g[7]) * 3600 + int(g[8] or 0) * 60 + int(g[9] or 0)


def _check_text(where: str, key: str, value: str) -> None:
    if _CONTROL.search(value):
        raise ValueError(f"{where}: {key}={value!r} contains a control character (newline, tab, ...); "
                         f"write it as one line of printable text")
    if not value.strip():
        raise ValueError(f"{where}: {key} is empty; set it or remove the line")


def check_cluster(c: ClusterConfig) -> ClusterConfig:
    """Every field's type, characters and range; the relations between fields. Returns c."""
    where = c.source
    for f in dataclasses.fields(c):
        if f.name == "source":
            continue
        v = getattr(c, f.name)
        kinds, hint = _KINDS[f.name]
        if v is None:
            if f.name in _REQUIRED:
                raise ValueError(f"{where}: {f.name} must be set: {hint}")
            continue
        # bool is an int in Python; a YAML `nodes: true` is a mistake, not 1
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            raise ValueError(f"{where}: {f.name}: expected {hint}; got {v!r} ({type(v).__name__})")
        if isinstance(v, str):
            _check_text(where, f.name, v)
        if f.name in _MINIMUM and v < _MINIMUM[f.name]:
            raise ValueError(f"{where}: {f.name}={v} is below {_MINIMUM[f.name]}: {hint}")
    for key in ("partition", "data_partition"):
        v = getattr(c, key)
        if v is not None and not _PARTITION_RE.fullmatch(v):
            raise ValueError(f"{where}: {key}={v!r}: use letters, digits, '_', '.', '-' (',' between several)")
    if c.account is not None and not _PARTITION_RE.fullmatch(c.account):
        raise ValueError(f"{where}: account={c.account!r}: use letters, digits, '_', '.', '-'")
    for key in ("mem", "data_mem"):
        v = getattr(c, key)
        if isinstance(v, int) and v < 0 or isinstance(v, str) and not _MEM_RE.fullmatch(v):
            raise ValueError(f"{where}: {key}={v!r}: expected {_KINDS[key][1]}")
    limit = time_limit_seconds(c.time)
    if limit is None:
        raise ValueError(f"{where}: time={c.time!r} is not a SLURM time limit: {_KINDS['time'][1]}")
    if c.signal_seconds >= limit:
        raise ValueError(f"{where}: signal_seconds={c.signal_seconds} is not below the time limit {c.time} "
                         f"({limit} s): the save-on-signal warning would come before training starts; lower "
                         f"signal_seconds or raise time")
    if c.data_time is not None:
        data_limit = time_limit_seconds(c.data_time)
        if data_limit is None:
            raise ValueError(f"{where}: data_time={c.data_time!r} is not a SLURM time limit: {_KINDS['data_time'][1]}")
        if c.signal_seconds >= data_limit:
            raise ValueError(f"{where}: signal_seconds={c.signal_seconds} is not below data_time {c.data_time} "
                             f"({data_limit} s): a data stage would be told to stop before it starts; raise data_time")
    if c.gpus_per_node == 0 and c.tasks_per_node is None:
        raise ValueError(f"{where}: gpus_per_node is 0, so set tasks_per_node (processes per node), e.g. "
                         f"tasks_per_node: 2")
    if c.gpus_per_node and c.tasks_per_node is not None and c.tasks_per_node > c.gpus_per_node:
        raise ValueError(f"{where}: tasks_per_node={c.tasks_per_node} is more than gpus_per_node="
                         f"{c.gpus_per_node}: the job runs one task per GPU; set tasks_per_node: null")
    if c.python is not None and re.search(r"\s", c.python):
        raise ValueError(f"{where}: python={c.python!r}: one interpreter path without spaces (put wrappers in "
                         f"a script and name that)")
    if c.container_image is not None and re.search(r"[\s,]", c.container_image):
        raise ValueError(f"{where}: container_image={c.container_image!r} has a space or comma; name the image "
                         f"or .sqsh file without them")
    for m in c.container_mounts:
        if not isinstance(m, str):
            raise ValueError(f"{where}: container_mounts: {m!r} is not a string; {_KINDS['container_mounts'][1]}")
        _check_text(where, "container_mounts", m)
        src = m.split(":")[0]
        if "," in m or not src.startswith("/"):
            raise ValueError(f"{where}: container_mounts: {m!r}: expected SRC[:DST[:FLAGS]] with an absolute SRC "
                             f"and no commas, e.g. /lustre:/lustre")
    for k, v in c.env.items():
        if not isinstance(k, str) or not _NAME_RE.fullmatch(k):
            raise ValueError(f"{where}: env: {k!r} is not a valid variable name (letters, digits, '_'; not "
                             f"starting with a digit)")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int, float))):
            raise ValueError(f"{where}: env: {k}={v!r}: give a string (quote it: {k}: \"{v}\") or null to drop a "
                             f"default")
        if isinstance(v, str):
            if _CONTROL.search(v):
                raise ValueError(f"{where}: env: {k}={v!r} contains a control character (newline, tab, ...); "
                                 f"write it as one line of printable text")
    for key in ("extra_sbatch", "data_extra_sbatch"):
        for raw in getattr(c, key):
            if not isinstance(raw, str):
                raise ValueError(f"{where}: {key}: {raw!r} is not a string; {_KINDS[key][1]}")
            _check_text(where, key, raw)
            if not re.fullmatch(r"--?[A-Za-z][A-Za-z0-9-]*(=.*)?", raw):
                raise ValueError(f"{where}: {key}: {raw!r} is not one sbatch option; write e.g. --exclusive "
                                 f"or --constraint=h100")
    return c


def load_cluster(name_or_path: str, **overrides: Any) -> ClusterConfig:
    """conf/cluster/<name>.yaml or a .yaml path; `overrides` (e.g. nodes from --nodes) win over the file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CLUSTER_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"cluster config {name_or_path!r} not found; known: {known} (or give a .yaml path)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings (key: value lines), got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(ClusterConfig)} - {"source"}
    unknown = sorted(str(k) for k in set(data) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid: {sorted(fields)}")
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    return check_cluster(ClusterConfig(**data, source=str(path)))
