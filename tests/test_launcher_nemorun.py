"""NeMo-Run as the executor (launcher/nemorun.py): the task script and executor settings (no NeMo-Run needed), the
sbatch text NeMo-Run renders from them, the Python entry point in a user's own experiment, a real tiny training
job through its SlurmExecutor on the local SLURM and through its LocalExecutor, and its requeue policy.

NeMo-Run lives in its own venv (`make nemo-run-env`; .ci/run builds it and sets ECOMVLM_REQUIRE_NEMO_RUN=1, so the
tests that need it fail there instead of skipping)."""

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from ecomvlm.cli import main
from ecomvlm.launcher import nemorun, slurm
from ecomvlm.launcher.cluster import load_cluster
from ecomvlm.launcher.plan import make_plan

from conftest import REPO

RECIPE = "tiny_siglip_qwen3_stage1_alignment"
NASTY = 'run.note="x\'; touch /tmp/ecomvlm_nr_pwned; echo $(touch /tmp/ecomvlm_nr_pwned)"'

# the recipe process, played by bash: records its argv and working directory; how it ends is chosen by run.seed
FAKE_PYTHON = """#!/bin/bash
printf '%s\\n' "$(pwd)" "$@" > "${FAKE_ARGV:-/dev/null}"
seed=0
for a in "$@"; do case "$a" in run.seed=*) seed=${a#run.seed=} ;; esac; done
echo "fake recipe: seed $seed restart ${SLURM_RESTART_COUNT:-0}"
case $seed in
  3) exit 3 ;;                                                      # a crash
  76) [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] && exit 0; exit 75 ;;   # saved on a signal once, then finishes
esac
exit 0
"""


@pytest.fixture
def nemo_run_python() -> str:
    py = os.environ.get("ECOMVLM_NEMO_RUN_PYTHON") or str(REPO / ".venv-nemorun" / "bin" / "python")
    if not os.access(py, os.X_OK):
        msg = f"NeMo-Run's venv is missing ({py}): make nemo-run-env"
        if os.environ.get("ECOMVLM_REQUIRE_NEMO_RUN"):
            pytest.fail(msg)
        pytest.skip(msg)
    return py


def _cluster(tmp_path: Path, extra: str = "", *, fake: bool = False, name: str = "c.yaml") -> str:
    """A cluster YAML: the local cluster's shape, `extra` lines replacing or adding keys; `fake`: the stand-in."""
    keys = {"nodes": "1", "gpus_per_node": "0", "tasks_per_node": "2", "time": '"00:10:00"', "log_dir": "logs",
            "runs_root": "runs", "max_requeues": "2", "signal_seconds": "60", "requeue": "true"}
    if fake:
        (tmp_path / "fake_python").write_text(FAKE_PYTHON)
        (tmp_path / "fake_python").chmod(0o755)
        keys |= {"tasks_per_node": "1", "python": str(tmp_path / "fake_python")}
    keys |= dict(line.strip().split(":", 1) for line in textwrap.dedent(extra).splitlines() if line.strip())
    (tmp_path / name).write_text("".join(f"{k}: {v.strip()}\n" for k, v in keys.items()))
    for d in ("tok", "shards"):
        (tmp_path / d).mkdir(exist_ok=True)
    return str(tmp_path / name)


def _inputs(tmp_path: Path) -> list[str]:
    return [f"tokenizer.path={tmp_path / 'tok'}", f"data.shards={tmp_path / 'shards'}"]


def test_task_script_and_executor_settings(tmp_path):
    """What launcher/nemorun.py hands NeMo-Run: a script that keeps every override as data and runs in the submit
    directory, env values pre-quoted (NeMo-Run writes them unquoted), our signal and requeue settings."""
    yaml = _cluster(tmp_path, 'env: {FOO: "a b", BAR: "it\'s"}\n', fake=True)
    plan = make_plan(RECIPE, [*_inputs(tmp_path), NASTY], load_cluster(yaml), job_name="nr", workdir=str(tmp_path),
                     check_queue=False)
    s = nemorun.spec(plan, "slurm")
    ex = s["executor"]
    assert ex["env_vars"]["FOO"] == "'a b'" and ex["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert subprocess.run(["bash", "-c", f"export BAR={ex['env_vars']['BAR']}; printf %s \"$BAR\""],
                          capture_output=True, text=True).stdout == "it's"
    assert (ex["signal"], ex["retries"], ex["array"]) == ("USR1@60", 2, None)
    assert "--kill-on-bad-exit=0" in ex["srun_args"] and ex["container_image"] is None
    assert s["nemorun_home"] == str(tmp_path / "logs" / "nemorun")  # no "/nemo_run" in it: NeMo-Run rewrites that
    # the task script, run as srun would run it (in NeMo-Run's job folder): argv intact, in the submit directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "task.sh").write_text(s["tasks"][0]["script"])
    argv_out = tmp_path / "argv"
    p = subprocess.run(["bash", str(tmp_path / "task.sh")], cwd=elsewhere, capture_output=True, text=True,
                       env={**os.environ, "FAKE_ARGV": str(argv_out), "SLURM_JOB_ID": "9", "SLURM_PROCID": "0"})
    assert p.returncode == 0, p.stderr
    cwd, *argv = argv_out.read_text().splitlines()
    assert cwd == str(tmp_path) and argv[argv.index("--config-name"):] == [
        "--config-name", RECIPE, *_inputs(tmp_path), NASTY, "run.dir=runs/nr"]
    assert "[ecomvlm] job 9 (nr) restart 0 of at most 2" in p.stdout
    assert not Path("/tmp/ecomvlm_nr_pwned").exists()
    # the batch shell's setup: NeMo-Run's `scontrol requeue` goes through for exit 75 only
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "scontrol").write_text('#!/bin/bash\necho "$*" >> "$CALLS"; [ "$1" = show ] && echo n1; exit 0\n')
    (stub / "scontrol").chmod(0o755)
    calls = tmp_path / "calls"
    p = subprocess.run(["bash", "-c", nemorun.SETUP_LINES + '\necho "$MASTER_ADDR:$MASTER_PORT"\n'
                        'exitcode=3; scontrol requeue "$SLURM_JOB_ID"\nexitcode=75; scontrol requeue "$SLURM_JOB_ID"'],
                       capture_output=True, text=True, env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}",
                                                            "CALLS": str(calls), "SLURM_JOB_ID": "20001",
                                                            "SLURM_JOB_NODELIST": "n1"})
    assert p.stdout.splitlines()[0] == "n1:20001"
    assert "exit code 3: not requeued" in p.stdout
    assert [c for c in calls.read_text().splitlines() if c.startswith("requeue")] == ["requeue 20001"]


def test_executor_settings_for_arrays_dependencies_containers_and_local(tmp_path):
    host = tmp_path / "lustre"
    host.mkdir()
    yaml = _cluster(tmp_path, f"""
        gpus_per_node: 8
        container_image: /images/ecomvlm.sqsh
        container_mounts: ["{host}:/data"]
        tasks_per_node: null
        extra_sbatch: ["--exclusive", "--constraint=h100"]
        """, name="gpu.yaml")
    plan = make_plan(RECIPE, [*_inputs(tmp_path), "data.global_batch_size=16"], load_cluster(yaml),
                     sweeps=["optim.lr=1e-3,2e-3"],
                     workdir=str(tmp_path), check_queue=False)
    plan.after = "123"  # as make_plan sets it for --after (which asks SLURM whether that job exists)
    ex = nemorun.spec(plan, "slurm")["executor"]
    assert ex["array"] == "0-1" and 'case "$SLURM_ARRAY_TASK_ID" in' in nemorun.spec(plan)["tasks"][0]["script"]
    assert ex["additional_parameters"] == {"exclusive": True, "constraint": "h100", "dependency": "afterok:123",
                                           "kill_on_invalid_dep": "yes"}
    assert ex["container_mounts"] == [f"{host}:/data", f"{tmp_path}:{tmp_path}"]
    assert "--no-container-mount-home" in ex["srun_args"] and "MASTER_ADDR" in ex["container_env"]
    assert "PYTHONUNBUFFERED" in ex["container_env"] and ex["gpus_per_node"] == 8
    with pytest.raises(ValueError, match="nemo-run-local runs one job"):
        nemorun.spec(plan, "local")
    local = make_plan(RECIPE, _inputs(tmp_path), load_cluster("local"), workdir=str(tmp_path), check_queue=False)
    s = nemorun.spec(local, "local")
    assert s["executor"] == {"ntasks_per_node": 1, "launcher": None, "env_vars": local.env()}
    assert "-m torch.distributed.run --standalone --nproc-per-node 2 -m ecomvlm.recipes.vlm_train" in \
           s["tasks"][0]["script"]


def test_nemo_run_renders_the_job_and_users_can_put_it_in_their_own_experiment(tmp_path, nemo_run_python, capsys,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    host = tmp_path / "lustre"
    (host / "tok").mkdir(parents=True)
    (host / "shards").mkdir()
    yaml = _cluster(tmp_path, f"""
        container_image: /images/ecomvlm.sqsh
        container_mounts: ["{host}:/data"]
        env: {{FOO: "a b"}}
        """)
    assert main(["launch", RECIPE, "--cluster", yaml, "--executor", "nemo-run", "--job-name", "nr_dry", "--dry-run",
                 "--", "tokenizer.path=/data/tok", "data.shards=/data/shards", NASTY]) == 0
    sbatch = capsys.readouterr().out
    assert "#SBATCH --job-name=nr_dry" in sbatch and "--account" not in sbatch
    assert "#SBATCH --signal=USR1@60" in sbatch and "#SBATCH --open-mode=append" in sbatch
    assert "export TORCHX_MAX_RETRIES=2" in sbatch and "export FOO='a b'" in sbatch
    assert 'command scontrol "$@"' in sbatch  # our requeue policy sits in front of NeMo-Run's requeue
    srun = next(line for line in sbatch.splitlines() if line.startswith("srun ") and "--output" in line)
    assert "--kill-on-bad-exit=1 --label --kill-on-bad-exit=0" in srun and "--no-container-mount-home" in srun
    assert f"--container-mounts {host}:/data,{tmp_path}:{tmp_path}," in srun and "--container-env " in srun
    assert not list((tmp_path / "logs" / "nemorun" / "experiments").glob("*/*"))  # a dry run leaves nothing
    # a user's own experiment, in NeMo-Run's venv (ecomvlm installed there --no-deps: check=False)
    fake_yaml = _cluster(tmp_path, fake=True, name="fake.yaml")
    user = tmp_path / "my_experiment.py"
    user.write_text(textwrap.dedent(f"""
        import glob
        import nemo_run as run
        from ecomvlm.launcher.nemorun import recipe_job

        script, ex = recipe_job({RECIPE!r}, ["tokenizer.path=/data/tok", "data.shards=/data/shards"], cluster={yaml!r},
                                job_name="stage1", after="77", check=False)
        with run.Experiment("mine", log_level="WARN") as exp:
            exp.add(script, executor=ex, name="stage1")
            exp.dryrun(log=False, delete_exp_dir=False)
            print(open(glob.glob(exp._exp_dir + "/*_sbatch.sh")[0]).read())
        script, ex = recipe_job({RECIPE!r}, [{NASTY!r}], cluster={fake_yaml!r}, executor="local", job_name="loc",
                                check=False)
        with run.Experiment("mine-local", log_level="WARN") as exp:
            exp.add(script, executor=ex, name="loc")
            exp.run(detach=False)
        print("STATUS", exp.status(return_dict=True)["loc"]["status"])
        """))
    env = {**os.environ, "NEMORUN_HOME": str(tmp_path / "nrhome"), "FAKE_ARGV": str(tmp_path / "argv")}
    p = subprocess.run([nemo_run_python, str(user)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "#SBATCH --dependency=afterok:77" in p.stdout and "#SBATCH --kill-on-invalid-dep=yes" in p.stdout
    assert f"{tmp_path}/nrhome/experiments/mine/" in p.stdout and "STATUS SUCCEEDED" in p.stdout
    cwd, *argv = (tmp_path / "argv").read_text().splitlines()
    assert cwd == str(tmp_path) and argv[-2:] == [NASTY, "run.dir=runs/loc"]
    assert not Path("/tmp/ecomvlm_nr_pwned").exists()


def _wait_released(job_id: str, tasks: list[str], timeout: float = 400) -> dict:
    """slurm.wait, releasing a requeued task's ~2 min hold after 5 s (see tests/test_launcher_slurm.py)."""
    t0, held = time.time(), {}
    while time.time() - t0 < timeout:
        states = slurm.job_states(job_id) or {}
        for rec in states.values():
            if rec["state"] == "PENDING" and rec["reason"] == "BeginTime" and rec["restarts"] != "0":
                if time.time() - held.setdefault((rec["job_id"], rec["restarts"]), time.time()) > 5:
                    subprocess.run(["scontrol", "update", f"JobId={rec['job_id']}", "StartTime=now"], check=False)
        if states and all(t in states and slurm._finished(states[t]) for t in tasks):
            return {t: states[t] for t in tasks}
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def _train_overrides(w: Path) -> list[str]:
    return [f"tokenizer.path={w / 'tok'}", f"data.shards={w / 's1'}", "trainer.max_steps=2", "trainer.save_every=2",
            "data.global_batch_size=4", "data.max_seq_length=192", "data.num_workers=0",
            "model.encoder.image_size=32"]


@pytest.mark.slurm
def test_nemo_run_slurm_executor_trains_on_the_local_slurm(tiny_train_inputs, tmp_path, nemo_run_python, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOMVLM_NEMO_RUN_PYTHON", nemo_run_python)
    assert main(["launch", RECIPE, "--cluster", "local", "--executor", "nemo-run", "--job-name", "nr_train", "--wait",
                 "--", *_train_overrides(tiny_train_inputs), NASTY]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    job = out.split("submitted job ")[1].split()[0]
    assert f"job {job}: COMPLETED (exit code 0)" in out and "through NeMo-Run" in out
    run = tmp_path / "runs" / "nr_train"  # in the submit directory, not NeMo-Run's job folder
    assert (run / "checkpoints" / "step_00000002" / "meta.json").is_file()
    assert json.loads((run / "config.json").read_text())["run"]["note"] == NASTY.split("=", 1)[1].strip('"')
    exp_dir = tmp_path / "logs" / "slurm" / "nemorun" / "experiments" / "nr_train"
    (log,) = exp_dir.glob(f"*/nr_train/log-nr_train_{job}_0.out")
    text = log.read_text()
    assert "0: [train] step 2/2" in text and "1: " in text  # both ranks, labelled
    assert not Path("/tmp/ecomvlm_nr_pwned").exists()


@pytest.mark.slurm
def test_nemo_run_requeues_only_exit_75_and_runs_arrays(tmp_path, nemo_run_python, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOMVLM_NEMO_RUN_PYTHON", nemo_run_python)
    yaml, ins = _cluster(tmp_path, fake=True), _inputs(tmp_path)
    assert main(["launch", RECIPE, "--cluster", yaml, "--executor", "nemo-run", "--job-name", "nr_rq", "--",
                 *ins, "run.seed=76"]) == 0
    rq = capsys.readouterr().out.split("submitted job ")[1].split()[0]
    assert main(["launch", RECIPE, "--cluster", yaml, "--executor", "nemo-run", "--job-name", "nr_arr",
                 "--sweep", "run.seed=0,3", "--"] + ins) == 0
    arr = capsys.readouterr().out.split("submitted job ")[1].split()[0]
    st = _wait_released(rq, [""])[""]
    assert (st["state"], st["exit_code"], st["restarts"]) == ("COMPLETED", "0:0", "1")
    task_dir = next((tmp_path / "logs" / "nemorun" / "experiments" / "nr_rq").glob("*/nr_rq"))
    assert sorted(p.name for p in task_dir.glob("log-*.out")) == [f"log-nr_rq_{rq}_0.out", f"log-nr_rq_{rq}_1.out"]
    final = _wait_released(arr, ["0", "1"])
    assert (final["0"]["state"], final["1"]["state"], final["1"]["exit_code"]) == ("COMPLETED", "FAILED", "3:0")
    assert final["1"]["restarts"] == "0"  # a crash is not retried
    arr_dir = next((tmp_path / "logs" / "nemorun" / "experiments" / "nr_arr").glob("*/nr_arr"))
    sbatch_logs = "".join(p.read_text() for p in arr_dir.glob("sbatch_*.out"))
    assert "[ecomvlm] exit code 3: not requeued" in sbatch_logs


def test_nemo_run_local_executor_trains_here(tiny_train_inputs, tmp_path, nemo_run_python, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOMVLM_NEMO_RUN_PYTHON", nemo_run_python)
    assert main(["launch", RECIPE, "--cluster", "local", "--executor", "nemo-run-local", "--job-name", "nr_local",
                 "--", *_train_overrides(tiny_train_inputs)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "NeMo-Run local job nr_local: SUCCEEDED" in out
    log = Path(out.split("; log ")[1].split(";")[0])
    assert "[train] step 2/2" in log.read_text()
    summary = json.loads((tmp_path / "runs" / "nr_local" / "summary.json").read_text())
    assert len(summary["losses"]) == 2 and summary["final_checkpoint"].endswith("step_00000002")
