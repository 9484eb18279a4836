"""`ecomvlm launch` without a cluster: the sbatch script run with stub srun/scontrol (quoting, requeue policy),
launch-time checks (one-line errors naming the field), containers, sweeps, run-directory states, and the
scontrol parser. Jobs on the real local SLURM: tests/test_launcher_slurm.py."""

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ecomvlm.cli import main
from ecomvlm.launcher import slurm
from ecomvlm.launcher.cluster import DEFAULT_ENV, load_cluster
from ecomvlm.launcher.plan import PREEMPTED_EXIT_CODE, compose_task, make_plan

RECIPE = "tiny_siglip_qwen3_stage1_alignment"


@pytest.fixture
def inputs(tmp_path):
    """Folders standing in for a tokenizer and shards (launch checks that they exist; nothing reads them)."""
    for d in ("tok", "shards"):
        (tmp_path / d).mkdir()
    return [f"tokenizer.path={tmp_path / 'tok'}", f"data.shards={tmp_path / 'shards'}"]


def _cluster_yaml(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    base = load_cluster("local")
    lines = {"nodes": "1", "gpus_per_node": "0", "tasks_per_node": "2", "time": '"00:30:00"', "log_dir": "logs",
             "runs_root": "runs", "requeue": "true", "max_requeues": "2", "signal_seconds": "60"}
    assert base.tasks_per_node == 2
    custom = dict(line.split(":", 1) for line in text.strip().splitlines() if line.strip())
    body = "\n".join(f"{k}: {v.strip()}" for k, v in {**lines, **custom}.items()) + "\n"
    (tmp_path / name).write_text(body)
    return str(tmp_path / name)


def _launch_err(argv: list[str], capsys) -> str:
    assert main(["launch", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, no traceback
    return err


def _stub_bin(tmp_path: Path, stubs: dict[str, str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    return bin_dir


def test_preempted_exit_code_is_the_trainers():
    from ecomvlm.recipes.checkpointing import PREEMPTED_EXIT_CODE as trainer_code

    assert PREEMPTED_EXIT_CODE == trainer_code


def test_rendered_script_runs_with_hostile_values_kept_as_data(tmp_path, inputs, monkeypatch):
    """The whole sbatch script runs (stub srun/scontrol on PATH): the recipe process gets exactly the override
    strings given, in order, and the shell never executes any part of them."""
    monkeypatch.chdir(tmp_path)
    pwned = tmp_path / "pwned"
    nasty = f'run.note="x\'; touch {pwned}; echo $(touch {pwned}) `touch {pwned}`"'
    plan = make_plan(RECIPE, [*inputs, "tokenizer.path=" + str(tmp_path / "tok"), nasty], load_cluster("local"),
                     sweeps=["optim.lr=1e-3,2e-3"])
    script = slurm.render(plan)
    assert "#SBATCH --array=0-1" in script and "#SBATCH --requeue" in script
    bin_dir = _stub_bin(tmp_path, {"srun": 'for a in "$@"; do printf "%s\\n" "$a"; done > "$ARGV_OUT"',
                                   "scontrol": "echo node1"})
    (tmp_path / "job.sh").write_text(script)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n1",
           "SLURM_NTASKS": "2", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "1",
           "ARGV_OUT": str(tmp_path / "argv")}
    proc = subprocess.run(["bash", str(tmp_path / "job.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    tail = argv[argv.index("--config-name"):]
    assert tail[:2] == ["--config-name", RECIPE]
    assert tail[2:] == [*inputs, f"tokenizer.path={tmp_path / 'tok'}", nasty, "optim.lr=0.002",
                        f"run.dir=runs/{RECIPE}/1_optim.lr_0.002"]  # array task 1 of the sweep
    assert not pwned.exists()
    assert "[ecomvlm] job 41_1 (tiny_siglip_qwen3_stage1_alignment) restart 0 of at most 2" in proc.stdout


def _run_job(tmp_path: Path, *, rc: int, restarts: int | None = None, array: bool = False, term_after: float = 0):
    """The rendered script with srun exiting `rc` (after `term_after` s: SIGTERM to the batch shell first);
    returns (exit code, stdout, scontrol calls)."""
    cluster = load_cluster(_cluster_yaml(tmp_path, "max_requeues: 2"))
    for d in ("tok", "shards"):
        (tmp_path / d).mkdir(exist_ok=True)
    plan = make_plan(RECIPE, [f"tokenizer.path={tmp_path / 'tok'}", f"data.shards={tmp_path / 'shards'}"], cluster,
                     workdir=str(tmp_path), check_queue=False)
    sleep = f"sleep {term_after * 3}; " if term_after else ""
    bin_dir = _stub_bin(tmp_path, {"srun": f"{sleep}exit {rc}",
                                   "scontrol": 'echo "$*" >> "$CALLS"; [ "$1" = show ] && echo n1; exit 0'})
    (tmp_path / "job.sh").write_text(slurm.render(plan))
    calls = tmp_path / "calls"
    calls.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n1",
           "SLURM_NTASKS": "2", "CALLS": str(calls)}
    if restarts is not None:
        env["SLURM_RESTART_COUNT"] = str(restarts)
    if array:
        env |= {"SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "0"}
    p = subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=env, stdout=subprocess.PIPE, text=True)
    if term_after:
        time.sleep(term_after)
        p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    requeues = [c for c in calls.read_text().splitlines() if c.startswith("requeue")]
    return p.returncode, out, requeues


def test_script_requeues_only_a_run_saved_on_a_signal_and_only_up_to_the_cap(tmp_path):
    rc, out, requeues = _run_job(tmp_path, rc=PREEMPTED_EXIT_CODE)  # first run: SLURM_RESTART_COUNT unset
    assert (rc, requeues) == (0, ["requeue 42"]), out
    assert "requeueing 42 (restart 1 of at most 2)" in out
    rc, out, requeues = _run_job(tmp_path, rc=PREEMPTED_EXIT_CODE, restarts=1, array=True)
    assert (rc, requeues) == (0, ["requeue 40_0"]), out  # an array task requeues itself, not the whole array
    rc, out, requeues = _run_job(tmp_path, rc=PREEMPTED_EXIT_CODE, restarts=2)
    assert (rc, requeues) == (PREEMPTED_EXIT_CODE, []) and "requeue cap reached (2 restarts)" in out
    rc, out, requeues = _run_job(tmp_path, rc=3)  # a crash: not retried
    assert (rc, requeues) == (3, []) and "[ecomvlm] exit code 3" in out
    # scancel / pre-emption: the batch shell gets SIGTERM, survives until the tasks saved, and does not requeue
    rc, out, requeues = _run_job(tmp_path, rc=PREEMPTED_EXIT_CODE, term_after=0.5)
    assert (rc, requeues) == (PREEMPTED_EXIT_CODE, []), out
    assert "batch shell got SIGTERM" in out and "[ecomvlm] exit code 75" in out


def test_sbatch_header_appends_logs_and_signals_the_tasks(tmp_path, inputs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["launch", RECIPE, "--cluster", "local", "--dry-run", "--", *inputs]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --open-mode=append" in script  # a requeued job appends to its log
    assert "#SBATCH --signal=USR1@60" in script and "B:USR1" not in script  # to the training tasks
    assert "#SBATCH --output=logs/slurm/%x-%j.out" in script and "#SBATCH --requeue" in script
    assert "export PYTHONUNBUFFERED=1" in script
    assert "kill-on-invalid-dep" not in script  # only with --after


def test_container_is_set_up_the_megatron_bridge_way(tmp_path, inputs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    host = tmp_path / "lustre"
    (host / "tok").mkdir(parents=True)
    (host / "shards").mkdir()
    yaml = _cluster_yaml(tmp_path, f"""
gpus_per_node: 8
tasks_per_node: null
container_image: /images/ecomvlm.sqsh
container_mounts: ["{host}:/data:ro"]
env: {{NCCL_DEBUG: WARN, NCCL_NVLS_ENABLE: null}}
""")
    ok = ["tokenizer.path=/data/tok", "data.shards=/data/shards", "parallel=tp2"]
    assert main(["launch", RECIPE, "--cluster", yaml, "--dry-run", "--", *ok]) == 0
    script = capsys.readouterr().out
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    wd = str(tmp_path)
    assert "--container-image=/images/ecomvlm.sqsh" in srun
    assert f"--container-mounts={host}:/data:ro,{wd}:{wd}" in srun  # the submit directory, at the same path
    assert f"--container-workdir={wd}" in srun and "--no-container-mount-home" in srun
    names = srun.split("--container-env=")[1].split()[0].split(",")
    expected = {*DEFAULT_ENV, "NCCL_DEBUG", "MASTER_ADDR", "MASTER_PORT", "CUDA_DEVICE_MAX_CONNECTIONS"}
    assert set(names) == expected - {"NCCL_NVLS_ENABLE"}  # null drops a default
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in script  # TP=2 overlaps its communication
    assert "export NCCL_DEBUG=WARN" in script and "NCCL_NVLS_ENABLE" not in script
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --ntasks-per-node=8" in script
    # paths are checked where the job will see them: through the mounts, never inside the image
    err = _launch_err([RECIPE, "--cluster", yaml, "--dry-run", "--", *ok[1:], "tokenizer.path=/data/nope"], capsys)
    assert f"tokenizer.path=/data/nope (the tokenizer) does not exist on this host (looked at {host}/nope" in err
    err = _launch_err([RECIPE, "--cluster", yaml, "--dry-run", "--", *ok[1:], "tokenizer.path=/opt/tok"], capsys)
    assert "tokenizer.path=/opt/tok" in err and "inside the image" in err
    assert main(["launch", RECIPE, "--cluster", yaml, "--dry-run", "--skip-path-check", "--", *ok[1:],
                 "tokenizer.path=/opt/tok"]) == 0
    capsys.readouterr()
    outside = _cluster_yaml(tmp_path, f"""
gpus_per_node: 8
container_image: img
container_mounts: ["{host}:/data"]
runs_root: /scratch/runs
""", name="outside.yaml")
    err = _launch_err([RECIPE, "--cluster", outside, "--dry-run", "--", *ok], capsys)
    assert "runs_root=/scratch/runs" in err and "inside the container and lost" in err


@pytest.mark.parametrize("line, names", [
    ('tasks_per_node: "2"', ["tasks_per_node: expected a whole number", "got '2' (str)"]),
    ("nodes: 0", ["nodes=0 is below 1"]),
    ("nodes: true", ["nodes: expected a whole number"]),
    ('partition: "batch\\nrm -rf /"', ["partition=", "control character"]),
    ('env: {A: "x\\ny"}', ["env: A=", "control character"]),
    ("env: {1A: x}", ["env: '1A' is not a valid variable name"]),
    ("env: {A: true}", ["env: A=True: give a string"]),
    ('time: "forever"', ["time='forever' is not a SLURM time limit"]),
    ('time: "00:01:00"', ["signal_seconds=60 is not below the time limit 00:01:00"]),
    ('extra_sbatch: ["--exclusive\\n#SBATCH --x"]', ["extra_sbatch=", "control character"]),
    ('extra_sbatch: ["rm -rf /"]', ["extra_sbatch: 'rm -rf /' is not one sbatch option"]),
    ('container_mounts: ["data:/data"]', ["container_mounts: 'data:/data'", "absolute SRC"]),
    ("gpus_per_node: 4\ntasks_per_node: 8", ["tasks_per_node=8 is more than gpus_per_node=4"]),
    ("max_requeues: -1", ["max_requeues=-1 is below 0"]),
    ("no_such_key: 1", ["unknown keys ['no_such_key']"]),
    ("env: [1, 2", ["not valid YAML (line"]),
])
def test_bad_cluster_yaml_is_one_line_naming_the_field(tmp_path, inputs, capsys, line, names):
    if line.startswith("env: [1"):
        yaml = tmp_path / "c.yaml"
        yaml.write_text("nodes: 1\n" + line + "\n")
        yaml = str(yaml)
    else:
        yaml = _cluster_yaml(tmp_path, line)
    err = _launch_err([RECIPE, "--cluster", yaml, "--dry-run", "--", *inputs], capsys)
    assert yaml in err
    for n in names:
        assert n in err, err


def test_bad_launch_arguments_are_one_line_naming_the_fix(tmp_path, inputs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [RECIPE, "--cluster", "local", "--dry-run"]
    assert "--nodes 0: a job needs at least 1 node" in _launch_err([*base, "--nodes", "0", "--", *inputs], capsys)
    err = _launch_err([*base, "--job-name", "..", "--", *inputs], capsys)
    assert "--job-name '..'" in err and "letters, digits" in err
    err = _launch_err([*base, "--job-name", "a b", "--", *inputs], capsys)  # no silent cleaning into a_b
    assert "--job-name 'a b'" in err
    err = _launch_err([*base], capsys)  # required ??? settings: before queueing, not in the job log
    assert "required settings not set: data.shards, tokenizer.path" in err and "-- data.shards=..." in err
    err = _launch_err([*base, "--", *inputs, "optim.lr=1e-3,2e-3"], capsys)
    assert "'optim.lr=1e-3,2e-3' gives several values (a sweep): add -m" in err
    assert "interval() sweeps" in _launch_err([*base, "-m", "--", *inputs, "optim.lr=interval(0,1)"], capsys)
    err = _launch_err([*base, "--", *inputs, f"run.dir={tmp_path}/elsewhere"], capsys)
    assert "the launcher sets the run directory" in err and "--job-name" in err
    assert "--after 'x1'" in _launch_err([*base, "--after", "x1", "--", *inputs], capsys)
    err = _launch_err([*base, "--", *inputs, "trainer.no_such_key=1"], capsys)
    assert "no_such_key" in err
    err = _launch_err([*base, "--", *inputs, "parallel=tp8"], capsys)
    assert "impossible parallel layout" in err
    err = _launch_err([*base, "--", *inputs, "data.global_batch_size=3"], capsys)
    assert "data.global_batch_size=3 is not a multiple" in err
    err = _launch_err([*base, "--", inputs[0], f"data.shards={tmp_path / 'missing'}"], capsys)
    assert f"data.shards={tmp_path / 'missing'} (the shards) does not exist on this host" in err
    with pytest.raises(FileNotFoundError, match="known: "):
        load_cluster("no_such_cluster")


def test_hydra_sweep_syntax_becomes_one_array_task_per_combination(tmp_path, inputs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # `--sweep` and `-m` sweeps multiply; `-- -m` works too (Hydra's spelling)
    assert main(["launch", RECIPE, "--cluster", "local", "--dry-run", "--sweep",
                 "model/decoder=choice(tiny_qwen3,tiny_llama)", "--", "-m", *inputs,
                 "optim.betas=[0.9,0.95],[0.9,0.999]", "trainer.max_steps=range(1,3)"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-7" in script
    cases = [line.strip() for line in script.splitlines() if line.strip()[:2] in {f"{i})" for i in range(8)}]
    assert len(cases) == 8
    assert cases[0].startswith("0) SWEEP=('optim.betas=[0.9,0.95]' trainer.max_steps=1 model/decoder=tiny_qwen3 ")
    assert cases[7].startswith("7) SWEEP=('optim.betas=[0.9,0.999]' trainer.max_steps=2 model/decoder=tiny_llama ")
    assert "#SBATCH --output=logs/slurm/%x-%A_%a.out" in script
    assert "run.dir=runs/tiny_siglip_qwen3_stage1_alignment/0_optim.betas_0.9_0.95_trainer.max_steps_1_model_" \
           "decoder_tiny_qwen3)" in cases[0]
    # a list value is one value, not a sweep
    assert main(["launch", RECIPE, "--cluster", "local", "--dry-run", "--", *inputs, "optim.betas=[0.9,0.95]"]) == 0
    script = capsys.readouterr().out
    assert "--array" not in script and "OVERRIDES=(" in script and "'optim.betas=[0.9,0.95]')" in script
    # glob over a config group: the options in conf/ (Hydra's config loader)
    assert main(["launch", RECIPE, "--cluster", "local", "--dry-run", "--sweep", "model/decoder=glob(tiny_*)",
                 "--", *inputs]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-2" in script and "model/decoder=tiny_gemma3" in script


def test_paper_grid_sweep_is_one_array_job(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "s3").mkdir()
    assert main(["launch", "siglip2_qwen3_8b_stage3_sft", "--cluster", "h100_8x", "--nodes", "2", "--dry-run",
                 "--sweep", "model=siglip2_qwen3_4b,siglip2_qwen3_8b,siglip2_llama3_1_8b", "--",
                 f"tokenizer.path={tmp_path / 'tok'}", f"data.shards={tmp_path / 's3'}"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-2" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --nodes=2" in script
    assert script.count("SWEEP=(model=") == 3 and "#SBATCH --exclusive" in script


def _fake_run(run_dir: Path, recipe: str, overrides: list[str], step: int) -> None:
    """A run directory as training leaves it: config.json and a finished checkpoint at `step`."""
    from ecomvlm.recipes.config import as_dict

    cfg = compose_task(recipe, overrides, 2)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(as_dict(cfg), default=str))
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"step": step}))
    (run_dir / "checkpoints" / f"step_{step + 1:08d}.tmp").mkdir()  # an unfinished save does not count


def test_run_directory_states_are_checked_at_launch(tmp_path, inputs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ov = [*inputs, "trainer.max_steps=4"]
    _fake_run(tmp_path / "runs" / "done", RECIPE, [*ov, "run.dir=runs/done"], step=4)
    _fake_run(tmp_path / "runs" / "half", RECIPE, [*ov, "run.dir=runs/half"], step=2)
    base = [RECIPE, "--cluster", "local", "--dry-run"]
    err = _launch_err([*base, "--job-name", "done", "--", *ov], capsys)
    assert "runs/done holds a finished run (step 4 of trainer.max_steps=4)" in err and "--resume" in err
    err = _launch_err([*base, "--job-name", "done", "--resume", "--", *ov], capsys)
    assert "already at step 4 of trainer.max_steps=4; raise trainer.max_steps" in err
    assert main(["launch", *base, "--job-name", "done", "--resume", "--", *inputs, "trainer.max_steps=6"]) == 0
    assert "runs/done holds a run at step 4 of 6: the job resumes it" in capsys.readouterr().err
    err = _launch_err([*base, "--job-name", "half", "--", *ov, "optim.lr=0.5"], capsys)
    assert "runs/half was started with other settings (optim.lr: 0.001 (saved) -> 0.5 (now))" in err
    assert main(["launch", *base, "--job-name", "half", "--", *ov, "trainer.save_every=1"]) == 0  # a free setting
    assert "step 2 of 4: the job resumes it" in capsys.readouterr().err
    err = _launch_err([*base, "--job-name", "fresh", "--resume", "--", *ov], capsys)
    assert "--resume: runs/fresh holds no checkpoint to resume" in err
    assert main(["launch", *base, "--job-name", "fresh", "--", *ov]) == 0


def _scontrol_stub(tmp_path: Path, monkeypatch, outputs: list[str]) -> None:
    """scontrol printing the given outputs one call after another (the last one repeats)."""
    d = tmp_path / "scontrol_out"
    d.mkdir()
    for i, text in enumerate(outputs):
        (d / str(i)).write_text(text)
    bin_dir = _stub_bin(tmp_path, {"scontrol": f'n=$(cat {d}/n 2>/dev/null || echo 0); f={d}/$n; '
                                               f'[ -f "$f" ] || f={d}/{len(outputs) - 1}; cat "$f"; '
                                               f'echo $((n + 1)) > {d}/n'})
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_array_state_is_read_per_task_and_wait_holds_until_the_last_one(tmp_path, monkeypatch):
    """scontrol prints one line per array task (a still-pending, unsplit range as one line): the shapes checked on
    SLURM 22.05. `wait` must not return while task 1 runs, though task 0's line (printed last) says COMPLETED."""
    running = ("JobId=11 ArrayJobId=11 ArrayTaskId=1 JobState=RUNNING Reason=None Restarts=0 ExitCode=0:0\n"
               "JobId=13 ArrayJobId=11 ArrayTaskId=0 JobState=COMPLETED Reason=None Restarts=0 ExitCode=0:0\n")
    pending = ("JobId=14 ArrayJobId=14 ArrayTaskId=2-3%1 JobState=PENDING Reason=Dependency ExitCode=0:0\n"
               "JobId=15 ArrayJobId=14 ArrayTaskId=0 JobState=RUNNING Reason=None ExitCode=0:0\n"
               "JobId=16 ArrayJobId=14 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode Restarts=1 "
               "ExitCode=4:0\n")
    done = running.replace("RUNNING", "FAILED").replace("ExitCode=0:0\nJobId=13", "ExitCode=4:0\nJobId=13")
    _scontrol_stub(tmp_path, monkeypatch, [pending])
    states = slurm.job_states("14")
    assert sorted(states) == ["0", "1", "2", "3"] and states["3"]["state"] == "PENDING"
    assert (states["1"]["state"], states["1"]["exit_code"], states["1"]["restarts"]) == ("FAILED", "4:0", "1")
    (tmp_path / "scontrol_out").rename(tmp_path / "old")
    _scontrol_stub(tmp_path, monkeypatch, [running, running, running, done])
    seen: list[str] = []
    final = slurm.wait("11", ["0", "1"], poll_s=0.01, report=seen.append)
    assert final["1"]["state"] == "FAILED" and not slurm.succeeded(final)
    assert seen[:2] == ["job 11_0: COMPLETED (exit code 0)", "job 11_1: RUNNING"]
    assert seen[-1] == "job 11_1: FAILED (exit code 4)"


def test_wait_ends_on_a_dependency_that_can_never_be_satisfied(tmp_path, monkeypatch):
    never = ("JobId=12 JobName=s2 JobState=PENDING Reason=DependencyNeverSatisfied Dependency=afterok:10(failed) "
             "Restarts=0 ExitCode=0:0\n")
    _scontrol_stub(tmp_path, monkeypatch, [never])
    seen: list[str] = []
    final = slurm.wait("12", [""], poll_s=0.01, timeout_s=5, report=seen.append)
    assert not slurm.succeeded(final)
    assert seen == ["job 12: PENDING, its dependency afterok:10(failed) can never be satisfied (the job it waits "
                    "for did not succeed); scancel it"]
