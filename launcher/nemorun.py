"""NeMo-Run as an executor: the same checked plan as ``launcher/slurm.py``, as a ``run.Script`` run by NeMo-Run's
``SlurmExecutor`` (over a ``LocalTunnel``) or ``LocalExecutor``.

Two ways in:

- ``ecomvlm launch RECIPE --executor nemo-run`` (SLURM) or ``--executor nemo-run-local`` (this machine): the plan
  is checked here, in the training environment, then handed to NeMo-Run in an interpreter that has it: this one
  if ``import nemo_run`` works, else ``$ECOMVLM_NEMO_RUN_PYTHON``, else the repository's ``.venv-nemorun``
  (``make nemo-run-env``). NeMo-Run 0.11 pins urllib3, anyio, httpx and packaging below what the training
  environment needs, so it usually lives in a venv of its own; there this file runs as a script and needs only
  the standard library and ``nemo_run``.
- Your own NeMo-Run experiment (any environment with ``nemo_run`` and ``ecomvlm``)::

      import nemo_run as run
      from ecomvlm.launcher.nemorun import recipe_job

      script, executor = recipe_job("siglip2_qwen3_8b_stage1_alignment", ["tokenizer.path=/t", "data.shards=/s"],
                                    cluster="h100_8x", job_name="stage1")
      with run.Experiment("stage1") as exp:
          exp.add(script, executor=executor, name="stage1")
          exp.run(detach=True)

  ``recipe_job`` checks the plan as ``ecomvlm launch`` does when ecomvlm's training dependencies are importable;
  ``check=False`` skips that (an environment with only nemo_run and ``ecomvlm`` installed ``--no-deps``).

Where this departs from NeMo-Run's defaults, and why:

- the command is our own quoted line, ``run.Script(inline=...)``: NeMo-Run joins Script args and writes env values
  into the sbatch script unquoted (env values are handed to it pre-quoted for the same reason);
- requeue: NeMo-Run's script requeues on any non-zero exit while ``SLURM_RESTART_COUNT < retries``; a shell
  function named ``scontrol`` (``setup_lines``) lets that ``scontrol requeue`` through only for exit 75 (a
  checkpoint saved on the signal), so a crash is not retried; ``retries`` is the cluster's ``max_requeues``;
- ``--signal=USR1@N`` to the tasks, as in launcher/slurm.py; no packager: the job runs the installed ecomvlm in
  the submit directory (the task ``cd``s there; NeMo-Run would run it in its job folder's ``code/``), which a
  container mounts at the same path, with ``--no-container-mount-home`` and ``--container-env``;
- the SLURM job name is the launch's job name (no ``<account>-`` prefix), so logs and the live-job check line up;
- job state comes from ``scontrol`` (launcher/slurm.py): NeMo-Run's needs ``sacct``, which needs accounting.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KINDS = ("slurm", "local")

# the batch shell's setup lines (after NeMo-Run's own setup, before srun): rendezvous, and our requeue policy
SETUP_LINES = """\
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
# ecomvlm requeues only a run that saved a checkpoint on the signal (exit 75); NeMo-Run would requeue any failure
scontrol() {
  if [ "${1:-}" = requeue ] && [ "${exitcode:-0}" != 75 ]; then
    echo "[ecomvlm] exit code ${exitcode:-?}: not requeued (only exit 75, a checkpoint saved on a signal, is)"
    return 0
  fi
  command scontrol "$@"
}"""


def inline_script(plan, *, nproc: int = 1) -> str:
    """The bash every task runs: into the submit directory, its overrides (an array task picks its own by
    SLURM_ARRAY_TASK_ID), exec the recipe; `nproc` > 1: under torchrun (the job's own, from its python)."""
    from ecomvlm.launcher.slurm import task_command, task_overrides

    q = shlex.quote
    cmd = task_command(plan)
    if nproc > 1:
        cmd = [cmd[0], "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *cmd[1:]]
    lines = ["set -uo pipefail", f"cd {q(plan.workdir)}",
             'if [ "${SLURM_PROCID:-${RANK:-0}}" = 0 ]; then echo "[ecomvlm] job ${SLURM_JOB_ID:-local} '
             f'({plan.name}) restart ${{SLURM_RESTART_COUNT:-0}} of at most {plan.cluster.max_requeues} at '
             '$(date -Is)"; fi',
             *task_overrides(plan),
             " ".join(["exec", *cmd, '"${OVERRIDES[@]}"', '"${SWEEP[@]}"'])]
    return "\n".join(lines) + "\n"


def _extra_parameters(extra_sbatch: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw in extra_sbatch:
        flag, eq, value = raw.lstrip("-").partition("=")
        out[flag.replace("-", "_")] = value if eq else True
    return out


def spec(plan, kind: str = "slurm", *, nemorun_home: str | None = None) -> dict[str, Any]:
    """A JSON-able description of the NeMo-Run experiment: the task script(s) and the executor's settings."""
    if kind not in KINDS:
        raise ValueError(f"NeMo-Run executor {kind!r}: choose one of {KINDS}")
    c, q = plan.cluster, shlex.quote
    home = nemorun_home or os.environ.get("NEMORUN_HOME") or os.path.join(plan.workdir, c.log_dir, "nemorun")
    out: dict[str, Any] = {"kind": kind, "name": plan.name, "workdir": plan.workdir,
                           "nemorun_home": os.path.abspath(home)}
    env = plan.env()
    if kind == "local":
        if plan.is_array:
            raise ValueError("--executor nemo-run-local runs one job; sweep on this machine with `ecomvlm train -m`, "
                             "or as a SLURM array with --executor nemo-run")
        if c.nodes != 1:
            raise ValueError(f"--executor nemo-run-local runs on this machine: nodes must be 1 (got {c.nodes})")
        # the job's torchrun, not NeMo-Run's torchrun launcher: that one runs `torchrun` from NeMo-Run's PATH, and
        # NeMo-Run's environment has no torch
        out["tasks"] = [{"name": plan.name, "script": inline_script(plan, nproc=c.ntasks_per_node)}]
        out["executor"] = {"ntasks_per_node": 1, "launcher": None, "env_vars": env}
        return out
    mounts = list(c.container_mounts)
    if c.container_image and not any(m.split(":")[1 if ":" in m else 0].rstrip("/") == plan.workdir for m in mounts):
        mounts.append(f"{plan.workdir}:{plan.workdir}")
    extra = _extra_parameters(c.extra_sbatch)
    if plan.after:
        extra |= {"dependency": f"afterok:{plan.after}", "kill_on_invalid_dep": "yes"}
    if not c.requeue:
        extra["no_requeue"] = True
    out["tasks"] = [{"name": plan.name, "script": inline_script(plan)}]
    out["executor"] = {
        "account": c.account, "partition": c.partition, "nodes": c.nodes, "ntasks_per_node": c.ntasks_per_node,
        "gpus_per_node": c.gpus_per_node or None, "cpus_per_task": c.cpus_per_task,
        "mem": None if c.mem is None else str(c.mem), "time": c.time, "container_image": c.container_image,
        "container_mounts": mounts if c.container_image else [],
        "container_env": plan.exported_names() if c.container_image else None,
        "env_vars": {k: q(v) for k, v in env.items()},  # NeMo-Run writes `export K=V` as given
        # after NeMo-Run's own --wait=60 --kill-on-bad-exit=1, which the later flag overrides (launcher/slurm.py)
        "srun_args": ["--label", "--kill-on-bad-exit=0", *(["--no-container-mount-home"] if c.container_image else [])],
        "signal": f"USR1@{c.signal_seconds}", "retries": c.max_requeues if c.requeue else 0,
        "array": f"0-{len(plan.tasks) - 1}" if plan.is_array else None,
        "additional_parameters": extra or None, "setup_lines": SETUP_LINES,
    }
    return out


# ------------------------------------------------------------------------------------ the NeMo-Run objects
def build(spec_: dict[str, Any]):
    """(run.Script per task, the executor) from a spec. Needs nemo_run."""
    import nemo_run as run
    from nemo_run.config import get_nemorun_home

    scripts = [run.Script(inline=t["script"]) for t in spec_["tasks"]]
    kw = dict(spec_["executor"])
    if spec_["kind"] == "local":
        return scripts, run.LocalExecutor(**kw)
    from nemo_run.core.execution.slurm import SlurmJobDetails

    home = get_nemorun_home()
    if "/nemo_run/" in os.path.join(home, ""):
        # NeMo-Run rewrites every "/nemo_run" in a script without a container into its job folder
        raise ValueError(f"NEMORUN_HOME={home}: NeMo-Run cannot use a folder path containing '/nemo_run'; choose "
                         f"another, e.g. {home.replace('/nemo_run', '/nemorun')}")
    account = kw.pop("account")
    ex = run.SlurmExecutor(account=account or "ecomvlm", job_name_prefix="ecomvlm.", poll_estimated_start_time=False,
                           # NeMo-Run writes the job files under its home; a LocalTunnel finds them only there
                           tunnel=run.LocalTunnel(job_dir=os.path.join(home, "experiments")),
                           packager=run.Packager(), **kw)
    ex.account = account  # None: no --account line (SlurmExecutor requires one only for its default job name)
    ex.job_details = SlurmJobDetails(job_name=spec_["name"])
    return scripts, ex


def recipe_job(recipe: str, overrides: list[str] | None = None, *, cluster: Any = "local", executor: str = "slurm",
               job_name: str | None = None, sweeps: list[str] | None = None, after: str | None = None,
               resume: bool = False, nodes: int | None = None, workdir: str | None = None, check: bool = True):
    """A recipe + overrides as (run.Script, executor) for your own ``run.Experiment``. `cluster`: a name in
    conf/cluster/, a .yaml path or a ClusterConfig; `executor`: "slurm" or "local"; `check`: the launch-time checks
    of ``ecomvlm launch`` (needs ecomvlm's training dependencies)."""
    from ecomvlm.launcher.cluster import ClusterConfig, check_cluster, load_cluster
    from ecomvlm.launcher.plan import make_plan, unchecked_plan

    c = check_cluster(cluster) if isinstance(cluster, ClusterConfig) else load_cluster(cluster, nodes=nodes)
    if check:
        plan = make_plan(recipe, list(overrides or []), c, job_name=job_name, sweeps=sweeps, after=after,
                         resume=resume, workdir=workdir)
    else:
        plan = unchecked_plan(recipe, list(overrides or []), c, job_name=job_name, sweeps=sweeps, after=after,
                              workdir=workdir)
    scripts, ex = build(spec(plan, executor))
    return scripts[0], ex


# ------------------------------------------------------------------------ from `ecomvlm launch` (training env)
def nemo_run_python() -> str:
    """An interpreter that can import nemo_run (see the module docstring for the order)."""
    import importlib.util

    if importlib.util.find_spec("nemo_run") is not None:
        return sys.executable
    env = os.environ.get("ECOMVLM_NEMO_RUN_PYTHON")
    if env:
        if not os.access(env, os.X_OK):
            raise ValueError(f"ECOMVLM_NEMO_RUN_PYTHON={env} is not an executable interpreter")
        return env
    venv = HERE.parent / ".venv-nemorun" / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise ValueError("--executor nemo-run: nemo_run is not importable here; build its own environment with "
                     "`make nemo-run-env` (NeMo-Run pins packages below this environment's) or set "
                     "ECOMVLM_NEMO_RUN_PYTHON to a python with nemo_run==0.11.x")


def submit(plan, kind: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Run the NeMo-Run side (this file as a script) on the plan's spec; its result (job ids, experiment dir, the
    sbatch text on a dry run). NeMo-Run's console output goes to <nemorun_home>/<name>.submit.log."""
    s = spec(plan, kind)
    s["dry_run"] = dry_run
    Path(s["nemorun_home"]).mkdir(parents=True, exist_ok=True)
    log = Path(s["nemorun_home"]) / f"{plan.name}.submit.log"
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(s))
        env = {**os.environ, "NEMORUN_HOME": s["nemorun_home"], "COLUMNS": "200"}
        with open(log, "w") as fh:
            proc = subprocess.run([nemo_run_python(), str(HERE / "nemorun.py"), "submit", str(spec_path),
                                   str(result_path)], cwd=plan.workdir, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not result_path.is_file():
            tail = "; ".join(line.strip() for line in log.read_text().splitlines()[-6:] if line.strip())
            raise ValueError(f"NeMo-Run could not {'render' if dry_run else 'submit'} the job (exit code "
                               f"{proc.returncode}; {log}): {tail}")
        result = json.loads(result_path.read_text())
    result["submit_log"] = str(log)
    return result


# ----------------------------------------------------------------------- the NeMo-Run side (nemo_run's env)
def _job_id(handle: str) -> str:
    # slurm_tunnel://nemo_run/<job id> (torchx app handle)
    return handle.rstrip("/").split("/")[-1]


def _side(spec_path: str, result_path: str) -> int:
    s = json.loads(Path(spec_path).read_text())
    os.environ["NEMORUN_HOME"] = s["nemorun_home"]  # read when nemo_run is imported
    import nemo_run as run

    scripts, ex = build(s)
    result: dict[str, Any] = {"kind": s["kind"], "jobs": []}
    with run.Experiment(s["name"], log_level="WARN") as exp:
        for t, script in zip(s["tasks"], scripts):
            exp.add(script, executor=ex, name=t["name"])
        result["exp_id"], result["exp_dir"] = exp._id, exp._exp_dir
        if s["dry_run"]:
            exp.dryrun(log=False, delete_exp_dir=False)
            result["sbatch"] = [Path(p).read_text() for p in sorted(glob.glob(os.path.join(exp._exp_dir,
                                                                                          "*_sbatch.sh")))]
            result["scripts"] = [t["script"] for t in s["tasks"]]
            shutil.rmtree(exp._exp_dir, ignore_errors=True)  # a dry run leaves nothing behind
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(exp._exp_dir))
        elif s["kind"] == "slurm":
            exp.run(detach=True)
            for job in exp.jobs:
                result["jobs"].append({"name": job.id, "job_id": _job_id(job.handle), "handle": job.handle,
                                       "log_dir": os.path.join(exp._exp_dir, job.id)})
        else:
            exp.run(detach=False, sequential=True)
    if s["kind"] == "local" and not s["dry_run"]:  # leaving the `with` waited for the local job to end
        status = exp.status(return_dict=True) or {}
        for job in exp.jobs:
            st = status.get(job.id, {})
            logs = sorted(glob.glob(os.path.join(exp._exp_dir, job.id, "**", "combined.log"), recursive=True))
            result["jobs"].append({"name": job.id, "state": str(st.get("status", "UNKNOWN")).split()[0],
                                   "handle": job.handle, "log": logs[-1] if logs else None})
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    # run as a script: launcher/ is sys.path[0], where cluster.py, plan.py, slurm.py would shadow other modules
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    if len(sys.argv) != 4 or sys.argv[1] != "submit":
        sys.exit("usage: nemorun.py submit SPEC.json RESULT.json  (run by `ecomvlm launch --executor nemo-run`)")
    sys.exit(_side(sys.argv[2], sys.argv[3]))
