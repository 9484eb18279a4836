"""What a launch will run, worked out and checked before anything is queued.

A :class:`Plan` is the recipe, the overrides every task shares, one :class:`Task` per array task (its swept values,
run directory and extra environment) and the cluster. :func:`make_plan` finds here, on the submit host, what
would otherwise surface only in a job log after the queue wait: every task's config is composed as the job will
compose it (unknown keys, wrong types, required ``???`` settings left unset, impossible parallel layouts, batch
sizes), the paths the job reads must exist (seen through the container's mounts when there is one), a run
directory that holds a finished run or another config is refused, and so is a second live job writing the same
run directory. Both executors (launcher/slurm.py, launcher/nemorun.py) render from the same plan.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ecomvlm.launcher.cluster import ClusterConfig

# recipes/checkpointing.py's PREEMPTED_EXIT_CODE (tests check they agree); not imported, that module loads Lightning
PREEMPTED_EXIT_CODE = 75
JOB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
JOB_ID_RE = re.compile(r"\d+(_\d+)?")
# settings that name something the job reads: (setting, what it is); init.from_checkpoint may be made by --after
PATH_SETTINGS = (("tokenizer.path", "the tokenizer"), ("data.shards", "the shards"),
                 ("init.from_checkpoint", "the checkpoint to start from"), ("init.hf_llava", "the HF LLaVA dir"),
                 ("model.decoder.hf_path", "the HF decoder"), ("model.encoder.hf_path", "the HF vision tower"))


@dataclasses.dataclass
class Task:
    index: int
    sweep: list[str]  # this task's swept overrides (empty for a single job)
    run_dir: str  # as the job sees it: relative to the submit directory, or absolute
    env: dict[str, str]  # exported for this task only
    notes: list[str]


@dataclasses.dataclass
class Plan:
    recipe: str
    overrides: list[str]  # shared by every task, exactly as given
    cluster: ClusterConfig
    name: str
    workdir: str  # the submit directory: the job runs there, relative paths mean paths there
    tasks: list[Task]
    after: str | None = None

    @property
    def is_array(self) -> bool:
        return len(self.tasks) > 1

    def env(self) -> dict[str, str]:
        return self.cluster.job_env()

    def exported_names(self) -> list[str]:
        """Every variable the job sets (what pyxis' --container-env must list to beat the image's values)."""
        names = set(self.env()) | {"MASTER_ADDR", "MASTER_PORT"}
        for t in self.tasks:
            names |= set(t.env)
        return sorted(names)

    def log_paths(self, job_id: str) -> list[str]:
        log_dir = self.cluster.log_dir
        if self.is_array:
            return [f"{log_dir}/{self.name}-{job_id}_{t.index}.out" for t in self.tasks]
        return [f"{log_dir}/{self.name}-{job_id}.out"]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def safe_name(s: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.-]+", "_", s)).strip("_.")[:120] or "run"


def check_job_name(name: str) -> str:
    if not JOB_NAME_RE.fullmatch(name):
        raise ValueError(f"--job-name {name!r}: use up to 100 letters, digits, '_', '.', '-', starting with a letter "
                         f"or digit (it names the run directory <runs_root>/NAME and the log)")
    return name


def _setting(cfg: Any, key: str) -> Any:
    return functools.reduce(lambda obj, part: getattr(obj, part, None) if obj is not None else None,
                            key.split("."), cfg)


def _mounts(cluster: ClusterConfig) -> list[tuple[str, str]]:
    out = []
    for m in cluster.container_mounts:
        parts = m.split(":")
        out.append((parts[0].rstrip("/") or "/", (parts[1] if len(parts) > 1 else parts[0]).rstrip("/") or "/"))
    return sorted(out, key=lambda sd: -len(sd[1]))


def visible_path(path: str, cluster: ClusterConfig, workdir: str) -> Path | None:
    """Where a path the job uses lives on the submit host; None when it is inside the container image only."""
    p = Path(os.path.normpath(path if os.path.isabs(path) else os.path.join(workdir, path)))
    if not cluster.container_image:
        return p
    for src, dst in _mounts(cluster):
        if p == Path(dst) or Path(dst) in p.parents:
            return Path(src) / p.relative_to(dst)
    wd = Path(workdir)
    if p == wd or wd in p.parents:  # the submit directory is mounted at the same path (launcher/slurm.py)
        return p
    return None


def latest_step(run_dir: Path) -> int | None:
    """Steps done at the newest finished checkpoint, of either backend (megatron: checkpoints/step_*/meta.json as
    recipes/checkpointing.latest_checkpoint finds it; AutoModel: recipes/automodel/rundir.py's layout)."""
    from ecomvlm.recipes.automodel.rundir import latest_checkpoint

    steps = [int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")
             if p.is_dir() and not p.name.endswith(".tmp") and (p / "meta.json").is_file()
             and p.name.split("_")[1].isdigit()]
    automodel = latest_checkpoint(run_dir)
    if automodel is not None:
        steps.append(automodel[0])
    return max(steps, default=None)


def compose_task(recipe: str, overrides: list[str], world_size: int):
    """The task's TrainConfig, composed as the job will, with the layout checked against the allocation."""
    from ecomvlm.recipes.config import compose, missing_settings, to_config, unknown_settings
    from ecomvlm.recipes.models.parallel import validate_parallel

    try:
        raw = compose(recipe, overrides)
    except Exception as e:  # hydra's errors name the bad key or group; keep their message, drop the traceback
        raise ValueError(f"recipe {recipe!r}: {_one_line(e)}") from None
    unknown = unknown_settings(raw)
    if unknown:
        raise ValueError(f"recipe {recipe!r}: unknown settings {unknown}: the training schema (recipes/config.py) "
                         f"has no such keys")
    missing = missing_settings(raw)
    if missing:
        raise ValueError(f"recipe {recipe!r}: required settings not set: {', '.join(missing)}; pass them after --, "
                         f"e.g. ecomvlm launch {recipe} -- {missing[0]}=...")
    try:
        cfg = to_config(raw)
    except Exception as e:
        raise ValueError(f"recipe {recipe!r}: {_one_line(e)}") from None
    d = cfg.model.decoder
    dp = validate_parallel(cfg.parallel, world_size, num_attention_heads=d.num_attention_heads,
                           num_query_groups=d.num_query_groups, num_layers=d.num_layers)
    if cfg.data.global_batch_size % (cfg.data.micro_batch_size * dp):
        raise ValueError(f"data.global_batch_size={cfg.data.global_batch_size} is not a multiple of micro_batch_size "
                         f"x data-parallel size = {cfg.data.micro_batch_size} x {dp} (world {world_size}); change "
                         f"the batch size or --nodes")
    if cfg.backend == "automodel":  # its own refusals too (PP, packing, FP8, TP vs the heads, ...), before queueing
        from ecomvlm.recipes.automodel.translate import check_layout

        check_layout(cfg, world_size)
    return cfg


def _check_paths(cfg: Any, cluster: ClusterConfig, workdir: str, after: str | None, notes: list[str]) -> None:
    inside = " (inside the container: mount it with container_mounts)" if cluster.container_image else ""
    for key, what in PATH_SETTINGS:
        value = _setting(cfg, key)
        if not value:
            continue
        host = visible_path(str(value), cluster, workdir)
        if host is None:
            raise ValueError(f"{key}={value}: {what} is not under a container mount or the submit directory "
                             f"{workdir}, so the job would look for it inside the image; add a mount to "
                             f"container_mounts, or pass --skip-path-check if the image has it")
        found = glob.glob(str(host)) if key == "data.shards" and glob.has_magic(str(host)) else host.exists()
        if found:
            continue
        if key == "init.from_checkpoint" and after:
            notes.append(f"init.from_checkpoint={value} does not exist yet: job {after} (--after) should write it")
            continue
        raise ValueError(f"{key}={value} ({what}) does not exist on this host (looked at {host}{inside}; relative "
                         f"paths are relative to the submit directory {workdir}); fix the path, or pass "
                         f"--skip-path-check if only the compute nodes see it")


def _check_run_dir(cfg: Any, run_dir: str, cluster: ClusterConfig, workdir: str, *, resume: bool,
                   after: str | None, notes: list[str]) -> None:
    host = visible_path(run_dir, cluster, workdir)
    if host is None:
        raise ValueError(f"runs_root={cluster.runs_root}: the run directory {run_dir} is not under a container mount "
                         f"or the submit directory, so checkpoints would be written inside the container and lost; "
                         f"mount it (container_mounts) or use a relative runs_root")
    step = latest_step(host)
    max_steps = cfg.trainer.max_steps
    other_name = "choose another --job-name"
    if step is None:
        if resume and not after:
            raise ValueError(f"--resume: {run_dir} holds no checkpoint to resume; drop --resume to start it")
        return
    if step >= max_steps:
        if not resume:
            raise ValueError(f"{run_dir} holds a finished run (step {step} of trainer.max_steps={max_steps}): "
                             f"{other_name}, or pass --resume with a higher trainer.max_steps to train on "
                             f"(init.from_checkpoint={run_dir} starts a new stage from it)")
        raise ValueError(f"--resume: {run_dir} is already at step {step} of trainer.max_steps={max_steps}; raise "
                         f"trainer.max_steps to train on")
    saved = host / "config.json"
    if saved.is_file():
        from ecomvlm.recipes.config import as_dict
        from ecomvlm.recipes.vlm_train import RESUME_FREE, settings_differences

        diffs = [f"{k}: {a!r} (saved) -> {b!r} (now)"
                 for k, a, b in settings_differences(json.loads(saved.read_text()), as_dict(cfg), RESUME_FREE)]
        if diffs:
            raise ValueError(f"{run_dir} was started with other settings ({'; '.join(diffs[:6])}): resume it with "
                             f"the saved settings, or {other_name} (init.from_checkpoint={run_dir} starts a new "
                             f"stage from its weights)")
    notes.append(f"{run_dir} holds a run at step {step} of {max_steps}: the job resumes it")


def live_jobs(name: str) -> list[tuple[str, str, str]]:
    """(job id, state, work dir) of queued or running jobs called `name` (any user); [] without squeue."""
    if shutil.which("squeue") is None:
        return []
    try:
        p = subprocess.run(["squeue", "-h", "-o", "%i|%T|%Z", f"--name={name}"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [line.split("|", 2) for line in p.stdout.splitlines() if line.count("|") >= 2]
    return [(r[0], r[1], r[2]) for r in rows] if p.returncode == 0 else []


def _check_queue(name: str, workdir: str, after: str | None) -> None:
    after_base = after.split("_")[0] if after else None
    if after and shutil.which("scontrol"):
        from ecomvlm.launcher.slurm import job_states

        if job_states(after) is None:
            raise ValueError(f"--after {after}: SLURM knows no such job (ended jobs are forgotten after the "
                             f"cluster's MinJobAge); check the id with squeue, or drop --after")
    for job_id, state, wd in live_jobs(name):
        if os.path.realpath(wd) == os.path.realpath(workdir) and job_id.split("_")[0] != after_base:
            raise ValueError(f"job {job_id} ({state}) is already called {name} and runs from {workdir}: both would "
                             f"write one run directory; wait for it, chain after it with --after "
                             f"{job_id.split('_')[0]}, or choose another --job-name")


def _split(overrides: list[str], sweeps: list[str] | None, multirun: bool, cluster: ClusterConfig,
           ) -> tuple[list[str], list[list[str]]]:
    """(the overrides every task shares, one list of swept values per task)."""
    from ecomvlm.recipes.cli import MULTIRUN_FLAGS, expand_multirun

    multirun = multirun or any(o in MULTIRUN_FLAGS for o in overrides)
    overrides = [o for o in overrides if o not in MULTIRUN_FLAGS]
    for o in [*overrides, *(sweeps or [])]:
        if o.partition("=")[0].lstrip("+~") in ("run.dir", "run.name"):
            raise ValueError(f"{o!r}: the launcher sets the run directory ({cluster.runs_root}/<job name>[/<task>]); "
                             f"name it with --job-name, or move it with the cluster's runs_root")
    shared, combos = expand_multirun(overrides, multirun=multirun)
    shared_s, combos_s = expand_multirun(list(sweeps or []), multirun=True)
    return shared + shared_s, [[*a, *b] for a in combos for b in combos_s]


def _run_dir(cluster: ClusterConfig, name: str, combos: list[list[str]], i: int) -> str:
    base = f"{cluster.runs_root.rstrip('/')}/{name}"
    return f"{base}/{i}_{safe_name('_'.join(combos[i]))}" if len(combos) > 1 else base


def make_plan(recipe: str, overrides: list[str], cluster: ClusterConfig, *, job_name: str | None = None,
              sweeps: list[str] | None = None, multirun: bool = False, after: str | None = None, resume: bool = False,
              workdir: str | None = None, check_paths: bool = True, check_queue: bool = True) -> Plan:
    """The checked plan (see the module docstring); ValueError naming the setting and the fix otherwise."""
    workdir = os.path.abspath(workdir or os.getcwd())
    name = check_job_name(job_name or recipe)
    if after is not None and not JOB_ID_RE.fullmatch(str(after)):
        raise ValueError(f"--after {after!r}: expected a SLURM job id, e.g. --after 12345")
    shared, combos = _split(overrides, sweeps, multirun, cluster)
    tasks = []
    for i, combo in enumerate(combos):
        run_dir = _run_dir(cluster, name, combos, i)
        where = f"array task {i} ({' '.join(combo)}): " if len(combos) > 1 else ""
        notes: list[str] = []
        try:
            cfg = compose_task(recipe, [*shared, *combo, f"run.dir={run_dir}"], cluster.world_size)
            if check_paths:
                _check_paths(cfg, cluster, workdir, after, notes)
            _check_run_dir(cfg, run_dir, cluster, workdir, resume=resume, after=after, notes=notes)
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None
        env = {}
        if "CUDA_DEVICE_MAX_CONNECTIONS" not in cluster.env and (
                cfg.parallel.tensor_model_parallel_size > 1 or cfg.parallel.context_parallel_size > 1):
            env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
        tasks.append(Task(i, combo, run_dir, env, notes))
    if check_queue:
        _check_queue(name, workdir, after)
    return Plan(recipe, shared, cluster, name, workdir, tasks, after)


def unchecked_plan(recipe: str, overrides: list[str], cluster: ClusterConfig, *, job_name: str | None = None,
                   sweeps: list[str] | None = None, after: str | None = None, workdir: str | None = None) -> Plan:
    """The plan without composing or checking anything (no torch or Hydra needed unless there are sweeps)."""
    workdir = os.path.abspath(workdir or os.getcwd())
    name = check_job_name(job_name or recipe)
    if after is not None and not JOB_ID_RE.fullmatch(str(after)):
        raise ValueError(f"--after {after!r}: expected a SLURM job id, e.g. --after 12345")
    shared, combos = _split(overrides, sweeps, False, cluster) if sweeps else (list(overrides), [[]])
    tasks = [Task(i, combo, _run_dir(cluster, name, combos, i), {}, []) for i, combo in enumerate(combos)]
    return Plan(recipe, shared, cluster, name, workdir, tasks, after)
