"""`ecomvlm launch`: a recipe + Hydra overrides + a cluster config -> an sbatch script -> a SLURM job.

The launcher imports no model code (the config schema only; no megatron): it composes the recipe's config (to
reject bad overrides and impossible parallel layouts *before* anything is queued), renders a script, and calls
sbatch. Every override, path and environment value goes into the script through ``shlex.quote``, so a value like
``x'; rm -rf /`` stays data.

What the script does: one task per GPU (``srun``), rendezvous from SLURM (MASTER_ADDR = first host of the job,
MASTER_PORT from the job id; ranks from SLURM_PROCID), a stable run directory so a requeued job resumes from its
last checkpoint, ``--requeue`` with a signal ahead of the time limit that requeues the job, logs per job
(``<log_dir>/<name>-<jobid>.out``), job arrays for sweeps (one array task per override combination, like Hydra
multirun) and ``--dependency=afterok`` chains (stage 2 after stage 1).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "conf" / "cluster"


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
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    python: str | None = None
    log_dir: str = "logs/slurm"
    runs_root: str = "runs"
    requeue: bool = True
    signal_seconds: int = 120
    extra_sbatch: list[str] = dataclasses.field(default_factory=list)

    @property
    def ntasks_per_node(self) -> int:
        n = self.tasks_per_node if self.tasks_per_node is not None else self.gpus_per_node
        if not n or n < 1:
            raise ValueError("cluster config: set gpus_per_node or tasks_per_node to at least 1")
        return n

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


def load_cluster(name_or_path: str, **overrides: Any) -> ClusterConfig:
    path = Path(name_or_path)
    if not path.suffix:
        path = CLUSTER_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"cluster config {name_or_path!r} not found; known: {known} (or give a .yaml path)")
    data = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(ClusterConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid: {sorted(fields)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ClusterConfig(**data)


def parse_sweep(sweeps: list[str]) -> list[list[str]]:
    """["a=1,2", "b=x,y"] -> the 4 override combinations (Hydra multirun's comma syntax)."""
    axes = []
    for s in sweeps:
        key, sep, values = s.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--sweep {s!r}: expected key=v1,v2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:120] or "job"


def validate(recipe: str, overrides: list[str], world_size: int) -> dict[str, Any]:
    """Compose the recipe as the job will, and check the parallel layout against the job's world size."""
    from omegaconf import OmegaConf

    from ecomvlm.recipes.config import compose, unknown_settings
    from ecomvlm.recipes.models.parallel import ParallelConfig, validate_parallel

    try:
        cfg = compose(recipe, overrides)
    except Exception as e:  # hydra's errors name the bad key/group; keep their message, drop the traceback
        raise ValueError(f"recipe {recipe!r} with overrides {overrides}: {e}") from None
    unknown = unknown_settings(cfg)
    if unknown:
        raise ValueError(f"recipe {recipe!r}: unknown settings {unknown}")
    c = OmegaConf.to_container(cfg, resolve=False)
    par = ParallelConfig(**c["parallel"])
    dec = c["model"]["decoder"]
    validate_parallel(par, world_size, num_attention_heads=dec.get("num_attention_heads"),
                      num_query_groups=dec.get("num_query_groups"), num_layers=dec.get("num_layers"))
    dp = world_size // (par.tensor_model_parallel_size * par.pipeline_model_parallel_size * par.context_parallel_size)
    data = c.get("data", {})
    if isinstance(data.get("global_batch_size"), int) and isinstance(data.get("micro_batch_size"), int):
        if data["global_batch_size"] % (data["micro_batch_size"] * dp):
            raise ValueError(f"data.global_batch_size={data['global_batch_size']} is not a multiple of "
                             f"micro_batch_size x data-parallel size = {data['micro_batch_size']} x {dp} "
                             f"(world {world_size})")
    return c


def render(recipe: str, overrides: list[str], cluster: ClusterConfig, *, job_name: str | None = None,
           sweep: list[list[str]] | None = None, dependency: str | None = None, workdir: str | None = None) -> str:
    """The sbatch script (a string). `sweep` = override lists, one array task each."""
    sweep = sweep or [[]]
    name = _safe_name(job_name or recipe)
    q = shlex.quote
    log_dir = Path(cluster.log_dir)
    out = f"{log_dir}/%x-%A_%a.out" if len(sweep) > 1 else f"{log_dir}/%x-%j.out"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={q(name)}", f"#SBATCH --nodes={int(cluster.nodes)}",
             f"#SBATCH --ntasks-per-node={cluster.ntasks_per_node}", f"#SBATCH --output={q(out)}",
             f"#SBATCH --time={q(str(cluster.time))}"]
    if cluster.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={int(cluster.gpus_per_node)}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("cpus_per_task", "cpus-per-task"),
                      ("mem", "mem")):
        v = getattr(cluster, key)
        if v is not None:
            lines.append(f"#SBATCH --{flag}={q(str(v))}")
    if cluster.requeue:
        lines += ["#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{int(cluster.signal_seconds)}"]
    if len(sweep) > 1:
        lines.append(f"#SBATCH --array=0-{len(sweep) - 1}")
    if dependency:
        if not re.fullmatch(r"(afterok|afterany|afternotok|after):\d+(:\d+)*", dependency):
            raise ValueError(f"dependency {dependency!r}: expected e.g. afterok:12345")
        lines.append(f"#SBATCH --dependency={dependency}")
    for raw in cluster.extra_sbatch:
        if "\n" in raw:
            raise ValueError("extra_sbatch entries must be single lines")
        lines.append(f"#SBATCH {q(raw) if ' ' in raw else raw}")
    python = cluster.python or sys.executable
    lines += [
        "",
        "set -uo pipefail",
        f"mkdir -p {q(str(log_dir))}",
    ]
    if workdir:
        lines.append(f"cd {q(workdir)}")
    lines += [
        "# rendezvous: the first host of the allocation; a port derived from the job id",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
    ]
    for k, v in sorted(cluster.env.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)):
            raise ValueError(f"cluster env name {k!r} is not a valid variable name")
        lines.append(f"export {k}={q(str(v))}")
    base_run = f"{cluster.runs_root}/{name}"
    lines.append("OVERRIDES=(" + " ".join(q(o) for o in overrides) + ")")
    if len(sweep) > 1:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for i, combo in enumerate(sweep):
            run_dir = f"{base_run}/{i}_" + _safe_name("_".join(combo))
            items = " ".join(q(o) for o in [*combo, f"run.dir={run_dir}"])
            lines.append(f"  {i}) SWEEP=({items}) ;;")
        lines += ['  *) echo "unknown array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    else:
        lines.append(f"SWEEP=({q(f'run.dir={base_run}')})")
    srun = ["srun", "--label", "--kill-on-bad-exit=1"]
    if cluster.container_image:
        srun += [f"--container-image={q(cluster.container_image)}"]
        if cluster.container_mounts:
            srun += [f"--container-mounts={q(','.join(cluster.container_mounts))}"]
    cmd = " ".join([*srun, q(python), "-m", "ecomvlm.recipes.vlm_train", "--config-name", q(recipe),
                    '"${OVERRIDES[@]}"', '"${SWEEP[@]}"'])
    lines += [
        "# preemption / time limit: SLURM sends USR1 ahead of the end; requeue, and the run resumes from its",
        "# last checkpoint (the run directory does not depend on the job id)",
        "requeue() { echo \"[ecomvlm] signal received: requeueing job $SLURM_JOB_ID\"; "
        "scontrol requeue \"$SLURM_JOB_ID\"; exit 0; }",
        "trap requeue USR1",
        f'echo "[ecomvlm] job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: {name}, world $SLURM_NTASKS"',
        f"{cmd} &",
        "wait $!",
        "status=$?",
        'echo "[ecomvlm] exit code $status"',
        "exit $status",
    ]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Submitted:
    job_id: str
    script_path: Path
    log_pattern: str


def submit(script: str, script_dir: str | Path) -> Submitted:
    script_dir = Path(script_dir)
    script_dir.mkdir(parents=True, exist_ok=True)
    name = re.search(r"--job-name=(\S+)", script).group(1).strip("'")
    path = script_dir / f"{name}.sbatch"
    path.write_text(script)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    out = re.search(r"--output=(\S+)", script).group(1).strip("'")
    return Submitted(job_id, path, out.replace("%x", name).replace("%j", job_id).replace("%A", job_id))


def job_state(job_id: str) -> dict[str, str]:
    """{'state': COMPLETED|FAILED|RUNNING|PENDING|..., 'exit_code': '0:0'} from scontrol (no accounting DB needed)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"scontrol show job {job_id}: {proc.stderr.strip()}")
    fields = dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv)
    return {"state": fields.get("JobState", "UNKNOWN"), "exit_code": fields.get("ExitCode", "?"),
            "reason": fields.get("Reason", "")}
