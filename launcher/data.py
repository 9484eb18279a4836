"""`ecomvlm launch data {curate,item-intel} --cluster NAME --array N -- STAGE ARGS...`: the model-calling data
pipelines as SLURM job arrays.

Both pipelines cut their records into fixed partitions (data_modules/partitions.py); an array task takes the
partitions ``i % SLURM_ARRAY_TASK_COUNT == SLURM_ARRAY_TASK_ID`` and finished partitions carry done markers, so a
requeued task or a re-submitted chain redoes nothing that finished. What becomes a job:

- curation (every stage reads the whole previous stage): a named stage is one array (``ingest`` and ``export`` are
  one task: they are not partitioned); ``run`` is a chain ``prep`` (ingest + clean, one task) -> ``image`` ->
  ``caption`` -> ``verify`` (arrays: each waits on remote I/O, images or a model endpoint) -> ``finish`` (generate +
  export, one task), each job ``--dependency=afterok`` on the one before;
- item intelligence (its stages read the same partitions of the stage before, so one task can take its partitions
  through every stage): ``all`` is one array of ``all --no-finish`` then a one-task ``finish`` job (``all``: the
  stages are found done, then both training sets and the report are built); a named stage is one array.

Everything is checked here before anything is queued, with one line naming the argument and the fix: the stage
arguments by the pipeline's own parser and config, the work folder (seen through the container's mounts), the
input files, endpoint URLs, the stage a named stage reads (finished, or made by ``--after``), API key variables.
Every argument is quoted into the script (control characters refused first); an endpoint's API key reaches the job
through the environment (sbatch exports the submitting shell's), only its variable's NAME is ever written.

Jobs are CPU jobs: one task, the cluster's ``data_*`` settings (launcher/cluster.py), no GPU unless
``data_gpus_per_node`` says so. Pre-emption and time limits: ``--signal=B:USR1@N`` warns the batch shell, which
stops the stage (each finished record is already on disk) and requeues the job while ``SLURM_RESTART_COUNT`` is
below ``max_requeues``; a crash is never requeued.

One module on purpose (~470 lines): the stage graph of both data pipelines, the array script and the
wait/report loop share one plan object; the SLURM primitives are launcher/slurm.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ecomvlm.launcher.cluster import _CONTROL, _NAME_RE, ClusterConfig
from ecomvlm.launcher.plan import JOB_ID_RE, _check_queue, check_job_name, safe_name, visible_path

PIPELINES = ("curate", "item-intel")
PREEMPTED_EXIT_CODE = 75  # what a job stopped for its time limit ends with once the requeue cap is reached

# the stages a pipeline runs as arrays (partitioned), the rest are one task
CURATE_PARTITIONED = ("clean", "image", "caption", "verify", "generate")
ITEM_PARTITIONED = ("ingest", "annotate", "ground", "crops", "reannotate", "all")
# which endpoint a stage calls: (option prefix, what it is)
CURATE_ENDPOINTS = {"caption": [("captioner", "the captioner")], "verify": [("verifier", "the verifier")],
                    "run": [("captioner", "the captioner"), ("verifier", "the verifier")]}
ITEM_ENDPOINTS = {"annotate": [("teacher", "the teacher")], "reannotate": [("teacher", "the teacher")],
                  "ground": [("grounder", "the grounding VLM")],
                  "all": [("teacher", "the teacher"), ("grounder", "the grounding VLM")]}
ITEM_UPSTREAM = {"annotate": ["ingest"], "ground": ["ingest"], "crops": ["ground"], "reannotate": ["crops"],
                 "build": ["ingest", "annotate", "ground", "crops", "reannotate"],
                 "report": ["ingest", "annotate", "ground", "crops", "reannotate"], "boxes": ["ground"]}


@dataclasses.dataclass
class DataJob:
    name: str  # the SLURM job name (and of its script and logs)
    tasks: int  # array tasks (1: a plain job)
    steps: list[list[str]]  # each: the words after `python -m ecomvlm.cli` (unquoted), run in order

    @property
    def is_array(self) -> bool:
        return self.tasks > 1

    def what(self) -> str:
        return " + ".join(f"{s[1]} {s[2]}" for s in self.steps)


@dataclasses.dataclass
class DataPlan:
    pipeline: str
    cluster: ClusterConfig
    workdir: str  # the submit directory: jobs run there, relative paths are relative to it
    jobs: list[DataJob]
    after: str | None = None
    key_envs: list[str] = dataclasses.field(default_factory=list)  # the NAMES of the API key variables
    notes: list[str] = dataclasses.field(default_factory=list)

    def env(self) -> dict[str, str]:
        return self.cluster.job_env()

    def log_paths(self, job: DataJob, job_id: str) -> list[str]:
        d = self.cluster.log_dir.rstrip("/") or "."
        if job.is_array:
            return [f"{d}/{job.name}-{job_id}_{i}.out" for i in range(job.tasks)]
        return [f"{d}/{job.name}-{job_id}.out"]


# ------------------------------------------------------------------------------------------------ checks
def _parse(pipeline: str, stage_args: list[str]):
    """The stage arguments through the pipeline's own parser (what the job will run): Namespace, or ValueError."""
    from ecomvlm.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(["data", pipeline, *stage_args])
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        msg = lines[-1].split("error: ", 1)[-1] if lines else "not valid"
        raise ValueError(f"data {pipeline} arguments: {msg} (the arguments after -- are those of `ecomvlm data "
                         f"{pipeline} STAGE ...`; see its --help)") from None


def _check_words(words: list[str]) -> None:
    for i, w in enumerate(words):
        if _CONTROL.search(w):
            raise ValueError(f"argument {i + 1} {w!r} contains a control character (newline, tab, ...): it would "
                             f"break the job script; write it as one line of printable text")


def _check_url(option: str, url: str) -> None:
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname or re.search(r"\s", url):
        raise ValueError(f"--{option} {url!r}: not an http(s) URL; write the endpoint's base URL, e.g. "
                         f"--{option} http://gpu-node:8000/v1")
    try:
        u.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"--{option} {url!r}: the port is not a number; e.g. http://gpu-node:8000/v1") from None
    if u.username or u.password:
        raise ValueError(f"--{option}: the URL carries a user or password; pass the key through the environment "
                         f"variable its --*-key-env option names, never on the command line")


def _check_endpoints(pipeline: str, stage: str, a, notes: list[str]) -> list[str]:
    """Well-formed URLs; the endpoints the stage calls given; key variables named (NAME only). Returns the names."""
    needed = (CURATE_ENDPOINTS if pipeline == "curate" else ITEM_ENDPOINTS).get(stage, [])
    key_attr = "{}_key_env" if pipeline == "curate" else "{}_api_key_env"
    key_opt = "--{}-key-env" if pipeline == "curate" else "--{}-api-key-env"
    names = []
    for which in ("captioner", "verifier") if pipeline == "curate" else ("teacher", "grounder"):
        url = getattr(a, f"{which}_url")
        if url:
            _check_url(f"{which}-url", url)
    for which, what in needed:
        if not getattr(a, f"{which}_url") or not getattr(a, f"{which}_model"):
            raise ValueError(f"--{which}-url and --{which}-model: the {stage} stage calls {what}; give both (e.g. "
                             f"--{which}-url http://gpu-node:8000/v1 --{which}-model NAME)")
        name = getattr(a, key_attr.format(which))
        if not _NAME_RE.fullmatch(name or ""):
            raise ValueError(f"{key_opt.format(which)} {name!r}: expected the NAME of the environment variable that "
                             f"holds the key (e.g. OPENAI_API_KEY), not the key itself")
        names.append(name)
        if not os.environ.get(name):
            notes.append(f"{name} is not set here: the job gets the environment of this shell (sbatch exports it); "
                         f"set it before launching if {what} needs a key")
    return sorted(set(names))


def _check_no_secret(words: list[str], key_envs: list[str]) -> None:
    for name in key_envs:
        value = os.environ.get(name, "")
        if len(value) >= 6 and any(value in w for w in words):
            raise ValueError(f"the value of {name} (an API key) appears in the stage arguments; pass the key only "
                             f"through the environment variable, the job script must never contain it")


def _host_path(option: str, value: str | Path, cluster: ClusterConfig, workdir: str) -> Path:
    host = visible_path(str(value), cluster, workdir)
    if host is None:
        raise ValueError(f"{option} {value}: not under a container mount or the submit directory {workdir}, so "
                         f"the job would look for it inside the image; add a mount to container_mounts")
    return host


def _check_work(work: str, cluster: ClusterConfig, workdir: str) -> Path:
    host = _host_path("--work", work, cluster, workdir)
    probe = host
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ValueError(f"--work {work}: {probe} is not a writable folder on this host (the work folder must be on "
                         f"a file system every compute node sees); choose another --work")
    return host


def _check_inputs(option: str, paths: list[str], cluster: ClusterConfig, workdir: str) -> None:
    for p in paths:
        host = _host_path(option, p, cluster, workdir)
        if not host.exists():
            raise ValueError(f"{option} {p}: does not exist on this host (looked at {host}; relative paths are "
                             f"relative to the submit directory {workdir}); fix the path, or pass --skip-path-check "
                             f"if only the compute nodes see it")


def _stage_first(pipeline: str, stage: str, stage_args: list[str]) -> None:
    if not stage_args or stage_args[0] != stage:
        raise ValueError(f"put the stage first after --: ecomvlm launch data {pipeline} --cluster NAME --array N "
                         f"-- {stage} ...")


# ------------------------------------------------------------------------------------------------ plans
def make_data_plan(pipeline: str, stage_args: list[str], cluster: ClusterConfig, *, array: int = 1,
                   after: str | None = None, job_name: str | None = None, check_paths: bool = True,
                   check_queue: bool = True, workdir: str | None = None) -> DataPlan:
    """The checked plan of a data launch (see the module docstring); ValueError naming the input and the fix."""
    workdir = os.path.abspath(workdir or os.getcwd())
    if pipeline not in PIPELINES:
        raise ValueError(f"launch data {pipeline!r}: expected one of {', '.join(PIPELINES)}, e.g. ecomvlm launch "
                         f"data curate --cluster NAME --array 8 -- caption --work WORK ...")
    if array < 1:
        raise ValueError(f"--array {array}: a data stage needs at least 1 array task, e.g. --array 8")
    if after is not None and not JOB_ID_RE.fullmatch(str(after)):
        raise ValueError(f"--after {after!r}: expected a SLURM job id, e.g. --after 12345")
    _check_words(stage_args)
    a = _parse(pipeline, stage_args)
    stage = a.stage
    _stage_first(pipeline, stage, stage_args)
    here = {("curate", "report"): f"curate report prints the export's report: run `ecomvlm data curate report --work "
                                  f"{getattr(a, 'work', 'WORK')}` here, it needs no job",
            ("item-intel", "synth"): "item-intel synth writes a small synthetic set: run `ecomvlm data item-intel "
                                     "synth --out DIR` here, it needs no job"}.get((pipeline, stage))
    if here:
        raise ValueError(here)
    notes: list[str] = []
    key_envs = _check_endpoints(pipeline, stage, a, notes)
    _check_no_secret(stage_args, key_envs)
    work = _check_work(a.work, cluster, workdir)
    base = check_job_name(job_name or f"{pipeline}-{safe_name(Path(a.work).name)}")
    if pipeline == "curate":
        jobs = _curate_jobs(a, stage, stage_args, array, base, work, cluster, workdir, after, check_paths, notes)
    else:
        jobs = _item_jobs(a, stage, stage_args, array, base, work, cluster, workdir, after, check_paths, notes)
    for j in jobs:
        check_job_name(j.name)
    if check_queue:
        for j in jobs:
            _check_queue(j.name, workdir, after)
    return DataPlan(pipeline, cluster, workdir, jobs, after, key_envs, notes)


def _with_stage(stage_args: list[str], stage: str) -> list[str]:
    return [stage, *stage_args[1:]]


def _curate_jobs(a, stage: str, stage_args: list[str], array: int, base: str, work: Path, cluster: ClusterConfig,
                 workdir: str, after: str | None, check_paths: bool, notes: list[str]) -> list[DataJob]:
    from ecomvlm.data_modules.curation import cli as ccli
    from ecomvlm.data_modules.curation import pipeline as pl

    try:
        cfg = ccli.config_from_args(a)
    except SystemExit as e:  # the curation CLI's own one-line errors (shares, mixes, endpoints)
        raise ValueError(str(e.code).removeprefix("ecomvlm data curate: ")) from None
    if check_paths:
        _check_inputs("input", list(a.inputs), cluster, workdir)
        if a.image_root:
            _check_inputs("--image-root", [a.image_root], cluster, workdir)
    cur = ["data", "curate"]
    if stage in ("ingest", "run") and not a.inputs and not pl.finished(dataclasses.replace(cfg, work=work), "ingest"):
        raise ValueError(f"curate {stage}: give the raw listing files or folders after the stage (e.g. -- {stage} "
                         f"raw/listings.jsonl --work {a.work} ...)")
    if stage == "run":
        prep = ([[*cur, *_with_stage(stage_args, "ingest")]] if a.inputs else [])
        prep.append([*cur, *_with_stage(stage_args, "clean")])
        jobs = [DataJob(f"{base}-prep", 1, prep)]
        jobs += [DataJob(f"{base}-{s}", array, [[*cur, *_with_stage(stage_args, s)]])
                 for s in ("image", "caption", "verify")]
        jobs.append(DataJob(f"{base}-finish", 1, [[*cur, *_with_stage(stage_args, "generate")],
                                                  [*cur, *_with_stage(stage_args, "export")]]))
        return jobs
    if stage != "ingest" and not after:
        upstream = pl.STAGES[pl.STAGES.index(stage) - 1]
        if not pl.finished(dataclasses.replace(cfg, work=work), upstream):
            raise ValueError(f"curate {stage} reads stage {upstream!r}, which is not finished under {a.work}: launch "
                             f"{upstream} first and chain this one with --after JOBID, or launch `run`")
    tasks = array if stage in CURATE_PARTITIONED else 1
    if tasks < array:
        notes.append(f"curate {stage} is not partitioned: one task, not {array}")
    return [DataJob(f"{base}-{stage}", tasks, [[*cur, *stage_args]])]


def _item_jobs(a, stage: str, stage_args: list[str], array: int, base: str, work: Path, cluster: ClusterConfig,
               workdir: str, after: str | None, check_paths: bool, notes: list[str]) -> list[DataJob]:
    from ecomvlm.data_modules.item_intel import cli as icli

    icli.config_from_args(a)  # its own checks (endpoint pairs, crop sizes) raise ValueError
    if stage in ("ingest", "all"):
        if not a.items:
            raise ValueError(f"item-intel {stage}: --items ITEMS.jsonl is required (the items to label)")
        if check_paths:
            _check_inputs("--items", [a.items], cluster, workdir)
    if check_paths and a.image_root:
        _check_inputs("--image-root", [a.image_root], cluster, workdir)
    if stage == "boxes" and check_paths:
        out_parent = _host_path("--out", a.out, cluster, workdir).parent
        if not out_parent.is_dir():
            raise ValueError(f"--out {a.out}: its folder {out_parent} does not exist; create it or choose another")
    if stage in ITEM_UPSTREAM and not after:
        behind = _item_behind(work, a.partition_size, ITEM_UPSTREAM[stage])
        if behind:
            raise ValueError(f"item-intel {stage} reads {behind} under {a.work}, not finished: launch it first and "
                             f"chain this one with --after JOBID, or launch `all`")
    ii = ["data", "item-intel"]
    if stage == "all":
        staged = stage_args if a.no_finish else [*stage_args, "--no-finish"]
        jobs = [DataJob(f"{base}-stages", array, [[*ii, *staged]])]
        if not a.no_finish:
            jobs.append(DataJob(f"{base}-finish", 1, [[*ii, *stage_args]]))
        return jobs
    tasks = array if stage in ITEM_PARTITIONED else 1
    if tasks < array:
        notes.append(f"item-intel {stage} is not partitioned: one task, not {array}")
    return [DataJob(f"{base}-{stage}", tasks, [[*ii, *stage_args]])]


def _item_behind(work: Path, partition_size: int, stages: list[str]) -> str | None:
    """The first of `stages` with unfinished partitions under an item-intel work folder, or None."""
    doc = work / "input.json"
    if not doc.is_file():
        return "the ingested items (input.json)"
    n = math.ceil(len(json.loads(doc.read_text())["keys"]) / partition_size)
    for s in stages:
        done = len(list((work / s).glob("part-*.done.json")))
        if done < n:
            return f"stage {s!r} ({done} of {n} partitions done)"
    return None


# ------------------------------------------------------------------------------------------------ scripts
def render(plan: DataPlan, job: DataJob, after: str | None) -> str:
    """One job's sbatch script. `after`: the job id it waits for (afterok), or None."""
    from ecomvlm.launcher.slurm import cluster_container_flags, scheduling_lines, script_preamble

    c, q = plan.cluster, shlex.quote
    log_dir = c.log_dir.rstrip("/") or "."
    out = f"{log_dir}/%x-%A_%a.out" if job.is_array else f"{log_dir}/%x-%j.out"
    time_limit = c.data_time or c.time
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job.name}", "#SBATCH --nodes=1", "#SBATCH --ntasks=1",
             f"#SBATCH --output={q(out)}", "#SBATCH --open-mode=append", f"#SBATCH --time={time_limit}",
             f"#SBATCH --chdir={q(plan.workdir)}"]
    cpus = c.data_cpus_per_task or c.cpus_per_task
    for flag, v in (("partition", c.data_partition or c.partition), ("account", c.account),
                    ("cpus-per-task", cpus), ("mem", c.data_mem), ("gpus-per-node", c.data_gpus_per_node or None)):
        if v is not None:
            lines.append(f"#SBATCH --{flag}={q(str(v))}")
    lines.append(f"#SBATCH --signal=B:USR1@{c.signal_seconds}")  # to this shell: it stops the stage and requeues
    lines += scheduling_lines(c.requeue, job.tasks if job.is_array else None, after, c.data_extra_sbatch)
    env = plan.env()
    srun = ["srun", "--ntasks=1", "--kill-on-bad-exit=1",
            *cluster_container_flags(c, plan.workdir, sorted({*env, *plan.key_envs}))]
    python = q(c.python or sys.executable)
    lines += script_preamble(c)
    if not job.is_array:  # a plain job takes every partition, whatever array the submitting shell ran in
        lines.append("unset SLURM_ARRAY_TASK_ID SLURM_ARRAY_TASK_COUNT SLURM_ARRAY_JOB_ID")
    lines += [
        'task=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}',
        'task=${task:-$SLURM_JOB_ID}',
        f'echo "[ecomvlm] job $task ({job.name}: {job.what()}) restart $restarts of at most $MAX_REQUEUES on '
        '$SLURM_JOB_NODELIST at $(date -Is); array task ${SLURM_ARRAY_TASK_ID:-none} of '
        '${SLURM_ARRAY_TASK_COUNT:-1}"',
        *[f"export {k}={q(v)}" for k, v in sorted(env.items())],
        "# API keys come from the environment sbatch passed on: only their names are here: "
        + (" ".join(plan.key_envs) or "(none)"),
        'pid=""; rc=0; stopping=0; terminated=0',
        "# the time-limit warning (B:USR1): stop the stage (finished records are on disk) and requeue; SIGTERM",
        "# (scancel, pre-emption: SLURM requeues by itself) is passed on and never requeued from here",
        "trap 'stopping=1; echo \"[ecomvlm] SIGUSR1: the time limit is near, stopping the stage\"; "
        '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null\' USR1',
        "trap 'terminated=1; echo \"[ecomvlm] batch shell got SIGTERM: no requeue from this script\"; "
        '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null\' TERM',
        "step() {  # NAME COMMAND...: one stage; wait in a loop, a trap interrupts it",
        '  [ "$stopping" -eq 0 ] && [ "$terminated" -eq 0 ] || return ' + str(PREEMPTED_EXIT_CODE),
        '  echo "[ecomvlm] $1: start at $(date -Is)"',
        '  shift; "$@" &',
        "  pid=$!",
        '  while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done',
        '  pid=""',
        '  echo "[ecomvlm] exit code $rc"',
        '  return "$rc"',
        "}",
    ]
    calls = []
    for s in job.steps:
        words = [*srun, python, "-m", "ecomvlm.cli", *(q(w) for w in s)]
        calls.append(f"step {q(' '.join(s[:3]))} " + " ".join(words))
    lines.append(" && \\\n  ".join(calls))
    lines += [
        "rc=$?",
        'if [ "$stopping" -eq 1 ] && [ "$terminated" -eq 0 ] && [ "$rc" -ne 0 ]; then',
        '  if [ "$restarts" -lt "$MAX_REQUEUES" ]; then',
        '    echo "[ecomvlm] requeueing $task (restart $((restarts + 1)) of at most $MAX_REQUEUES): finished '
        'partitions and records are kept"',
        '    scontrol requeue "$task" && exit 0',
        '    echo "[ecomvlm] scontrol requeue $task failed: resubmit the same command to go on"',
        "  else",
        '    echo "[ecomvlm] requeue cap reached ($MAX_REQUEUES restarts): not requeued; resubmit the same command '
        'to go on"',
        "  fi",
        f"  rc={PREEMPTED_EXIT_CODE}",
        "fi",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def dry_run_text(plan: DataPlan) -> str:
    out = []
    for k, job in enumerate(plan.jobs):
        after = plan.after if k == 0 else f"<id of job {k}>"
        tasks = f"{job.tasks} array tasks" if job.is_array else "1 task"
        out.append(f"# ---- job {k + 1} of {len(plan.jobs)}: {job.name} ({tasks}: {job.what()})"
                   + (f", after {after} succeeded" if after else "") + " ----\n")
        out.append(render(plan, job, after))
    return "".join(out)


@dataclasses.dataclass
class SubmittedJob:
    job: DataJob
    job_id: str
    script_path: Path
    log_paths: list[str]


def submit(plan: DataPlan) -> list[SubmittedJob]:
    """Every job of the plan, each after the one before; a refused sbatch cancels the jobs this call queued."""
    from ecomvlm.launcher.slurm import SlurmError

    script_dir = Path(plan.workdir) / plan.cluster.log_dir / "scripts"
    script_dir.mkdir(parents=True, exist_ok=True)  # also makes log_dir, which slurmd opens before the script runs
    done: list[SubmittedJob] = []
    after = plan.after
    for job in plan.jobs:
        path = script_dir / f"{job.name}.sbatch"
        path.write_text(render(plan, job, after))
        proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, cwd=plan.workdir)
        if proc.returncode != 0:
            for s in done:
                subprocess.run(["scancel", s.job_id], capture_output=True)
            msg = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
            gone = f"; cancelled the jobs queued before it ({', '.join(s.job_id for s in done)})" if done else ""
            raise SlurmError(f"sbatch refused {path}: {msg}{gone}")
        job_id = proc.stdout.strip().split(";")[0]
        done.append(SubmittedJob(job, job_id, path, plan.log_paths(job, job_id)))
        after = job_id
    return done


def wait_all(submitted: list[SubmittedJob], report) -> list[tuple[SubmittedJob, dict[str, Any]]]:
    """Each job in order until it ended (a job whose dependency failed ends too: --kill-on-invalid-dep)."""
    from ecomvlm.launcher.slurm import wait

    return [(s, wait(s.job_id, [str(i) for i in range(s.job.tasks)] if s.job.is_array else [""], report=report))
            for s in submitted]
