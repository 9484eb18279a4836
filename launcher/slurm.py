"""`ecomvlm launch`: a checked :class:`~ecomvlm.launcher.plan.Plan` -> an sbatch script -> a SLURM job, and the
job's state from ``scontrol`` (no accounting database needed).

The launcher imports no model code (the config schema only; no megatron). Every override, path and environment
value goes into the script through ``shlex.quote`` (and control characters are refused before that), so a value
like ``x'; rm -rf /`` stays data.

What the script does:

- one task per GPU (``srun``), rendezvous from SLURM (MASTER_ADDR = first host of the job, MASTER_PORT from the
  job id; ranks from SLURM_PROCID), in the submit directory, with a run directory that does not depend on the job
  id, so a requeued or resubmitted job resumes from its last checkpoint;
- pre-emption and time limits: ``--signal=USR1@N`` reaches the training tasks themselves (not ``B:``, the batch
  shell only), they finish the step, save and exit with 75; the script then requeues the job (``--requeue``) while
  ``SLURM_RESTART_COUNT`` is below ``max_requeues``. Only exit 75 is requeued: a crash is not retried forever, and
  a SIGTERM to the batch shell (scancel, pre-emption by SLURM, which requeues by itself) is never requeued again;
- one log per job or array task, appended across requeues (``--open-mode=append``), each attempt opening with a
  ``[ecomvlm] job ... restart R of at most M`` header;
- job arrays for sweeps (one task per override combination, like Hydra multirun) and ``--dependency=afterok``
  chains (stage 2 after stage 1) with ``--kill-on-invalid-dep=yes``, so a job whose dependency failed is cancelled
  instead of pending forever;
- with a container (pyxis): the image, the cluster's mounts plus the submit directory at the same path, that
  directory as the container's workdir, ``--no-container-mount-home``, and ``--container-env`` naming every
  variable the script sets, so the image's own values (NCCL_*, ...) do not win (the NeMo-Run/Megatron-Bridge way).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ecomvlm.launcher.plan import PREEMPTED_EXIT_CODE, Plan


class SlurmError(OSError):
    """SLURM refused a request or could not answer (the CLI prints it as one line, like other user errors)."""


TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
NEVER = "DependencyNeverSatisfied"
# Ranks that saved on a signal exit 75 one after another, and rank 0 still writes the run's summary: a non-zero exit
# must not kill the others at once (--kill-on-bad-exit=1 did, turning a clean save into exit 143). Instead every
# task gets 60 s after the first one ends (a crashed rank's peers, stuck in a collective, are ended then).
SRUN_FLAGS = ["--label", "--kill-on-bad-exit=0", "--wait=60"]


def task_command(plan: Plan, *, python: str | None = None) -> list[str]:
    """python -m ecomvlm.recipes.vlm_train ... as shell words (quoted), up to the overrides."""
    q = shlex.quote
    return [q(python or plan.cluster.python or sys.executable), "-m", "ecomvlm.recipes.vlm_train", "--config-name",
            q(plan.recipe)]


def task_overrides(plan: Plan) -> list[str]:
    """Bash lines that set OVERRIDES (shared) and SWEEP (this array task's values + run.dir) and per-task env."""
    q = shlex.quote
    lines = ["OVERRIDES=(" + " ".join(q(o) for o in plan.overrides) + ")"]
    if plan.is_array:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for t in plan.tasks:
            items = " ".join(q(o) for o in [*t.sweep, f"run.dir={t.run_dir}"])
            exports = "".join(f" export {k}={q(v)};" for k, v in sorted(t.env.items()))
            lines.append(f"  {t.index}){exports} SWEEP=({items}) ;;")
        lines += ['  *) echo "[ecomvlm] unknown array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    else:
        t = plan.tasks[0]
        lines += [f"export {k}={q(v)}" for k, v in sorted(t.env.items())]
        lines.append(f"SWEEP=({q(f'run.dir={t.run_dir}')})")
    return lines


def container_flags(plan: Plan) -> list[str]:
    return cluster_container_flags(plan.cluster, plan.workdir, plan.exported_names())


def cluster_container_flags(c, workdir: str, env_names: list[str]) -> list[str]:
    """pyxis flags of srun: the image, the mounts + the submit directory, and the variables that beat the image's."""
    q = shlex.quote
    if not c.container_image:
        return []
    mounts = list(c.container_mounts)
    if not any(m.split(":")[1 if ":" in m else 0].rstrip("/") == workdir for m in mounts):
        mounts.append(f"{workdir}:{workdir}")
    return [f"--container-image={q(c.container_image)}", f"--container-mounts={q(','.join(mounts))}",
            f"--container-workdir={q(workdir)}", "--no-container-mount-home",
            f"--container-env={','.join(env_names)}"]


def scheduling_lines(requeue: bool, array_tasks: int | None, after: str | None, extra: list[str]) -> list[str]:
    """#SBATCH lines every ecomvlm job shares: requeue or not, the array, the afterok chain (a dependency that can
    never be met kills the job instead of leaving it pending forever), the cluster's extra options (quoted)."""
    q = shlex.quote
    lines = ["#SBATCH --requeue" if requeue else "#SBATCH --no-requeue"]
    if array_tasks is not None:
        lines.append(f"#SBATCH --array=0-{array_tasks - 1}")
    if after:
        lines += [f"#SBATCH --dependency=afterok:{after}", "#SBATCH --kill-on-invalid-dep=yes"]
    for raw in extra:
        flag, eq, value = raw.partition("=")
        lines.append(f"#SBATCH {flag}={q(value)}" if eq else f"#SBATCH {flag}")
    return lines


def script_preamble(c) -> list[str]:
    """The batch shell's first lines: strict pipes, the requeue cap (0 without requeue) and this attempt's number."""
    return ["", "set -uo pipefail", f"MAX_REQUEUES={c.max_requeues if c.requeue else 0}",
            "restarts=${SLURM_RESTART_COUNT:-0}"]


def render(plan: Plan) -> str:
    """The sbatch script (a string)."""
    c, q = plan.cluster, shlex.quote
    log_dir = c.log_dir.rstrip("/") or "."
    out = f"{log_dir}/%x-%A_%a.out" if plan.is_array else f"{log_dir}/%x-%j.out"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={plan.name}", f"#SBATCH --nodes={c.nodes}",
             f"#SBATCH --ntasks-per-node={c.ntasks_per_node}", f"#SBATCH --output={q(out)}",
             "#SBATCH --open-mode=append", f"#SBATCH --time={c.time}", f"#SBATCH --chdir={q(plan.workdir)}"]
    if c.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={c.gpus_per_node}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("cpus_per_task", "cpus-per-task"),
                      ("mem", "mem")):
        v = getattr(c, key)
        if v is not None:
            lines.append(f"#SBATCH --{flag}={q(str(v))}")
    lines.append(f"#SBATCH --signal=USR1@{c.signal_seconds}")  # to the tasks: they save (exit 75) before the end
    lines += scheduling_lines(c.requeue, len(plan.tasks) if plan.is_array else None, plan.after, c.extra_sbatch)
    srun = ["srun", *SRUN_FLAGS, *container_flags(plan)]
    cmd = " ".join([*srun, *task_command(plan), '"${OVERRIDES[@]}"', '"${SWEEP[@]}"'])
    lines += [
        *script_preamble(c),
        'task=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}',
        'task=${task:-$SLURM_JOB_ID}',
        f'echo "[ecomvlm] job $task ({plan.name}) restart $restarts of at most $MAX_REQUEUES on '
        '$SLURM_JOB_NODELIST at $(date -Is), world $SLURM_NTASKS"',
        f"mkdir -p {q(log_dir)}",
        "# rendezvous: the first host of the allocation; a port derived from the job id",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        *[f"export {k}={q(v)}" for k, v in sorted(plan.env().items())],
        *task_overrides(plan),
        "# the batch shell must live until srun returns: SIGTERM (scancel, pre-emption, time limit) is noted, and a",
        "# job SLURM is ending is not requeued from here; SIGUSR1 is the tasks' (scancel --full also sends it here)",
        "terminated=0",
        "trap 'terminated=1; echo \"[ecomvlm] batch shell got SIGTERM: no requeue from this script\"' TERM",
        "trap 'echo \"[ecomvlm] batch shell got SIGUSR1 (the tasks save on it)\"' USR1",
        f"{cmd} &",
        "pid=$!",
        'while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done  # a trap interrupts wait',
        'echo "[ecomvlm] exit code $rc"',
        f'if [ "$rc" -eq {PREEMPTED_EXIT_CODE} ] && [ "$terminated" -eq 0 ]; then',
        '  if [ "$restarts" -lt "$MAX_REQUEUES" ]; then',
        '    echo "[ecomvlm] checkpoint saved on a signal: requeueing $task (restart $((restarts + 1)) of at most '
        '$MAX_REQUEUES)"',
        '    scontrol requeue "$task" && exit 0',
        '    echo "[ecomvlm] scontrol requeue $task failed: resubmit the same command to resume"',
        "  else",
        '    echo "[ecomvlm] requeue cap reached ($MAX_REQUEUES restarts): not requeued; resubmit the same command '
        'to resume from the last checkpoint"',
        "  fi",
        "fi",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Submitted:
    job_id: str
    script_path: Path
    log_paths: list[str]


def submit(plan: Plan, script: str) -> Submitted:
    script_dir = Path(plan.workdir) / plan.cluster.log_dir / "scripts"
    script_dir.mkdir(parents=True, exist_ok=True)  # also makes log_dir, which slurmd opens before the script runs
    path = script_dir / f"{plan.name}.sbatch"
    path.write_text(script)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, cwd=plan.workdir)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
        raise SlurmError(f"sbatch refused {path}: {msg}")
    job_id = proc.stdout.strip().split(";")[0]
    return Submitted(job_id, path, plan.log_paths(job_id))


# ------------------------------------------------------------------------------------------------- job state
def _expand_ids(spec: str) -> list[str]:
    """An ArrayTaskId field: '3', '0-2', '1,4-5', '0-9%2' (throttled) -> task ids."""
    out: list[str] = []
    for part in spec.split("%")[0].split(","):
        a, _, b = part.partition("-")
        if a.isdigit() and (not b or b.isdigit()):
            out += [str(i) for i in range(int(a), int(b or a) + 1)]
    return out


def job_states(job_id: str) -> dict[str, dict[str, str]] | None:
    """{array task id ('' for a plain job): {state, exit_code, reason, restarts, dependency, job_id}} from
    ``scontrol show job -o``, one line per task (a pending, unsplit range is one line for all of its tasks);
    None when SLURM no longer knows the job (purged after MinJobAge, or never existed)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id}: {' '.join(proc.stderr.split())}")
    out: dict[str, dict[str, str]] = {}
    for line in proc.stdout.splitlines():
        f = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobState" not in f:
            continue
        rec = {"state": f["JobState"], "exit_code": f.get("ExitCode", "?"), "reason": f.get("Reason", ""),
               "restarts": f.get("Restarts", "0"), "dependency": f.get("Dependency", ""), "job_id": f.get("JobId", "")}
        for task in _expand_ids(f["ArrayTaskId"]) if "ArrayTaskId" in f else [""]:
            out[task] = rec
    return out


def _finished(rec: dict[str, str]) -> bool:
    return rec["state"] in TERMINAL or (rec["state"] == "PENDING" and rec["reason"] == NEVER)


def describe(job_id: str, task: str, rec: dict[str, str]) -> str:
    name = f"{job_id}_{task}" if task else job_id
    if rec["reason"] == NEVER:
        return (f"job {name}: {rec['state']}, its dependency {rec['dependency']} can never be satisfied (the job it "
                f"waits for did not succeed)" + ("; scancel it" if rec["state"] == "PENDING" else ""))
    exit_code = rec["exit_code"].split(":")[0]
    extra = f", restarts {rec['restarts']}" if rec["restarts"] not in ("", "0") else ""
    return f"job {name}: {rec['state']} (exit code {exit_code}{extra})"


def wait(job_id: str, tasks: list[str], *, poll_s: float = 2.0, timeout_s: float | None = None,
         report: Callable[[str], None] = print) -> dict[str, dict[str, str]]:
    """Block until every task (array task ids, or [''] for a plain job) has ended, or waits on a dependency that
    can never be satisfied. Reports each change of state; returns the final record per task."""
    t0, last, seen = time.time(), {}, False
    while True:
        states = job_states(job_id)
        if states is None:
            if seen:  # purged: SLURM keeps ended jobs only for MinJobAge
                raise SlurmError(f"job {job_id} is no longer known to SLURM (ended and purged); its log has the "
                                   f"outcome ('[ecomvlm] exit code N')")
            raise SlurmError(f"job {job_id} is not known to SLURM")
        seen = True
        now = {t: states.get(t) or {"state": "PENDING", "exit_code": "?", "reason": "", "restarts": "0",
                                    "dependency": "", "job_id": ""} for t in tasks}
        for t, rec in now.items():
            key = (rec["state"], rec["reason"] if rec["state"] == "PENDING" else "", rec["restarts"])
            if last.get(t) != key:
                report(describe(job_id, t, rec) if _finished(rec) else
                       f"job {job_id}{'_' + t if t else ''}: {rec['state']}"
                       + (f" ({rec['reason']})" if rec["state"] == "PENDING" and rec["reason"] not in ("", "None")
                          else "") + (f", restarts {rec['restarts']}" if rec["restarts"] not in ("", "0") else ""))
                last[t] = key
        if all(_finished(r) for r in now.values()):
            return now
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise TimeoutError(f"job {job_id}: not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)


def succeeded(final: dict[str, dict[str, str]]) -> bool:
    return all(r["state"] == "COMPLETED" and r["exit_code"].split(":")[0] == "0" for r in final.values())
