"""`ecomvlm launch` on the real local SLURM (.ci/start_slurm.sh): array jobs and --wait, dependencies that can never
be satisfied, a live job of the same name, the requeue cap, and a real tiny training job that gets the time-limit
signal, saves, is requeued and resumes with no lost steps, with stage 2 chained after it.

Jobs that only exercise the batch script run a stand-in for the recipe process (a few lines of bash named by the
cluster's `python`), so they cost seconds; the pre-emption test trains for real. SLURM holds a requeued job for
about two minutes before it may start again; the tests release it at once (`scontrol update StartTime=now`).
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from ecomvlm.cli import main
from ecomvlm.launcher import slurm

RECIPE = "tiny_siglip_qwen3_stage1_alignment"

# the recipe process, played by bash: how it ends is chosen by run.seed among its arguments
FAKE_PYTHON = """#!/bin/bash
seed=0
for a in "$@"; do case "$a" in run.seed=*) seed=${a#run.seed=} ;; esac; done
echo "fake recipe: task ${SLURM_ARRAY_TASK_ID:-none} seed $seed restart ${SLURM_RESTART_COUNT:-0}"
case $seed in
  7) sleep 8; exit 4 ;;                                       # slow, then fails
  75) exit 75 ;;                                              # saved on a signal, every time
esac
exit 0
"""


def _fake_cluster(tmp_path: Path) -> str:
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "fake.yaml").write_text(f"""nodes: 1
gpus_per_node: 0
tasks_per_node: 1
cpus_per_task: 1
time: "00:05:00"
python: {fake}
log_dir: logs
runs_root: runs
requeue: true
max_requeues: 1
signal_seconds: 30
""")
    for d in ("tok", "shards"):
        (tmp_path / d).mkdir(exist_ok=True)
    return str(tmp_path / "fake.yaml")


def _inputs(tmp_path: Path) -> list[str]:
    return [f"tokenizer.path={tmp_path / 'tok'}", f"data.shards={tmp_path / 'shards'}"]


def _launch(argv: list[str], capsys, rc: int = 0) -> str:
    assert main(["launch", *argv]) == rc, capsys.readouterr()
    return capsys.readouterr().out


def _job_id(out: str) -> str:
    return out.split("submitted job ")[1].split()[0]


def _wait_released(job_id: str, tasks: list[str], timeout: float = 400) -> dict:
    """slurm.wait, but a requeued task held for its BeginTime is released after 5 s (not at once: a job started
    again within the second of its requeue is killed, "Job credential revoked")."""
    t0, held = time.time(), {}
    while time.time() - t0 < timeout:
        states = slurm.job_states(job_id) or {}
        for rec in states.values():
            if rec["state"] == "PENDING" and rec["reason"] == "BeginTime" and rec["restarts"] != "0":
                key = (rec["job_id"], rec["restarts"])
                if time.time() - held.setdefault(key, time.time()) > 5:
                    subprocess.run(["scontrol", "update", f"JobId={rec['job_id']}", "StartTime=now"], check=False)
        if states and all(t in states and slurm._finished(states[t]) for t in tasks):
            return {t: states[t] for t in tasks}
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


@pytest.mark.slurm
def test_array_wait_holds_for_every_task_and_a_dependency_that_failed_ends_the_wait(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yaml, ins = _fake_cluster(tmp_path), _inputs(tmp_path)
    # an array (Hydra's -m) whose slow task is 0; while it is queued or running, the same name from here is refused
    out = _launch([RECIPE, "--cluster", yaml, "--job-name", "arr_b", "--", "-m", *ins, "run.seed=7,0"], capsys)
    b = _job_id(out)
    assert f"logs logs/arr_b-{b}_0.out logs/arr_b-{b}_1.out;" in out  # %a expanded: one log per task
    assert main(["launch", RECIPE, "--cluster", yaml, "--job-name", "arr_b", "--dry-run", "--", *ins]) == 2
    err = capsys.readouterr().err
    assert f"job {b}_" in err and "is already called arr_b" in err and "--after" in err
    # --wait on an array whose slow task is 1: it returns when the last task ended, with its failure
    out = _launch([RECIPE, "--cluster", yaml, "--job-name", "arr_a", "--sweep", "run.seed=0,7", "--wait", "--", *ins],
                  capsys, rc=1)
    a = _job_id(out)
    assert "[ecomvlm] exit code 4" in (tmp_path / "logs" / f"arr_a-{a}_1.out").read_text()  # it had ended
    assert f"job {a}_0: COMPLETED (exit code 0)" in out and f"job {a}_1: FAILED (exit code 4)" in out
    assert f"job {a}: 1 of 2 tasks completed; not: job {a}_1: FAILED (exit code 4)" in out
    final = slurm.wait(b, ["0", "1"], poll_s=1, timeout_s=300, report=lambda _: None)
    assert (final["0"]["state"], final["0"]["exit_code"], final["1"]["state"]) == ("FAILED", "4:0", "COMPLETED")
    # a job after the failed array can never start: SLURM cancels it (--kill-on-invalid-dep) and --wait says why
    out = _launch([RECIPE, "--cluster", yaml, "--job-name", "dep", "--after", a, "--wait", "--", *ins], capsys, rc=1)
    assert "can never be satisfied" in out and f"afterok:{a}" in out
    # a job submitted elsewhere without that flag would pend forever; --wait's loop ends on it too
    held = subprocess.run(["sbatch", "--parsable", f"--dependency=afterok:{a}", "-o", "/dev/null", "--wrap", "true"],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        final = slurm.wait(held, [""], poll_s=1, timeout_s=60, report=lambda _: None)
        assert (final[""]["state"], final[""]["reason"]) == ("PENDING", "DependencyNeverSatisfied")
    finally:
        subprocess.run(["scancel", held], check=False)
    assert main(["launch", RECIPE, "--cluster", yaml, "--after", "999999", "--dry-run", "--", *ins]) == 2
    assert "--after 999999: SLURM knows no such job" in capsys.readouterr().err


@pytest.mark.slurm
def test_requeue_on_exit_75_stops_at_the_cap_and_the_log_keeps_every_attempt(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yaml, ins = _fake_cluster(tmp_path), _inputs(tmp_path)
    job = _job_id(_launch([RECIPE, "--cluster", yaml, "--job-name", "cap", "--", *ins, "run.seed=75"], capsys))
    final = _wait_released(job, [""])
    assert (final[""]["state"], final[""]["exit_code"], final[""]["restarts"]) == ("FAILED", "75:0", "1")
    log = (tmp_path / "logs" / f"cap-{job}.out").read_text()
    assert log.count("fake recipe:") == 2  # both attempts in one file (--open-mode=append)
    assert f"[ecomvlm] job {job} (cap) restart 0 of at most 1" in log
    assert f"[ecomvlm] job {job} (cap) restart 1 of at most 1" in log
    assert "requeueing" in log and "requeue cap reached (1 restarts)" in log


def _data_overrides(w: Path, steps: int = 2) -> list[str]:
    return [f"tokenizer.path={w / 'tok'}", f"data.shards={w / 's1'}", f"trainer.max_steps={steps}",
            f"trainer.save_every={steps}", "data.global_batch_size=4", "data.max_seq_length=192",
            "data.num_workers=0", "model.encoder.image_size=32"]


def _steps(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^0: \[train\] step (\d+)/", text, re.M)]  # rank 0 (srun --label)


@pytest.mark.slurm
def test_signal_saves_requeues_and_resumes_with_no_lost_steps_then_stage2_follows(tiny_train_inputs, tmp_path,
                                                                                   capsys, monkeypatch):
    """The time-limit warning (what --signal=USR1@N sends to the tasks, here at once with scancel --signal): the
    ranks finish the step, save and exit 75; the job requeues itself, resumes from that checkpoint and finishes;
    stage 2, chained with --after, waits through the requeue and starts from stage 1's run."""
    monkeypatch.chdir(tmp_path)
    w, steps = tiny_train_inputs, 30
    ov = [*_data_overrides(w, steps), "trainer.save_every=100", "trainer.log_every=1"]
    nasty = "run.note=\"x'; touch /tmp/ecomvlm_pwned\""
    j1 = _job_id(_launch([RECIPE, "--cluster", "local", "--job-name", "s1", "--", *ov, nasty], capsys))
    j2 = _job_id(_launch(["tiny_siglip_qwen3_stage2_mid", "--cluster", "local", "--job-name", "s2", "--after", j1,
                          "--", *_data_overrides(w), "init.from_checkpoint=runs/s1"], capsys))
    log_path = tmp_path / "logs" / "slurm" / f"s1-{j1}.out"
    t0 = time.time()
    while not (log_path.is_file() and _steps(log_path.read_text())):
        assert time.time() - t0 < 300, log_path.read_text()[-3000:] if log_path.is_file() else "no log"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", j1], check=True)
    st1 = _wait_released(j1, [""])[""]
    log = log_path.read_text()
    assert (st1["state"], st1["exit_code"], st1["restarts"]) == ("COMPLETED", "0:0", "1"), log[-3000:]
    first, second = log.split(f"[ecomvlm] job {j1} (s1) restart 1 of at most 2")
    assert f"[ecomvlm] job {j1} (s1) restart 0 of at most 2" in first
    assert "received signal SIGUSR1" in first and "[ecomvlm] exit code 75" in first and "requeueing" in first
    saved = _steps(first)[-1]
    assert _steps(first) == list(range(1, saved + 1)) and saved < steps
    assert _steps(second) == list(range(saved + 1, steps + 1))  # no step lost, none repeated
    run1 = tmp_path / "runs" / "s1"
    assert (run1 / "checkpoints" / f"step_{saved:08d}" / "meta.json").is_file()
    summary = json.loads((run1 / "summary.json").read_text())
    assert summary["start_step"] == saved and len(summary["losses"]) == steps - saved
    assert json.loads((run1 / "config.json").read_text())["run"]["note"] == "x'; touch /tmp/ecomvlm_pwned"
    assert not Path("/tmp/ecomvlm_pwned").exists()
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    tb = EventMultiplexer({"run": str(run1 / "tb")}).Reload()
    tag = next(t for t in tb.Runs()["run"]["scalars"] if "loss" in t)
    tb_steps = [e.step for e in tb.Scalars("run", tag)]
    assert max(tb_steps) >= steps - 1 and len(tb_steps) == len(set(tb_steps))  # TensorBoard steps went on
    st2 = _wait_released(j2, [""])[""]
    assert st2["state"] == "COMPLETED", (tmp_path / "logs" / "slurm" / f"s2-{j2}.out").read_text()[-3000:]
    s2 = json.loads((tmp_path / "runs" / "s2" / "summary.json").read_text())
    assert s2["init"].startswith(f"checkpoint runs/s1/checkpoints/step_{steps:08d}")
    # the same name again: refused before queueing, unless it really goes on with the same settings
    base = [RECIPE, "--cluster", "local", "--job-name", "s1", "--dry-run", "--"]
    assert main(["launch", *base, *ov, nasty]) == 2
    assert f"runs/s1 holds a finished run (step {steps} of trainer.max_steps={steps})" in capsys.readouterr().err
    assert main(["launch", *base[:-1], "--resume", "--", *ov, nasty, f"trainer.max_steps={steps + 5}",
                 "optim.lr=0.5"]) == 2
    assert "runs/s1 was started with other settings (optim.lr:" in capsys.readouterr().err
    assert main(["launch", *base[:-1], "--resume", "--", *ov, nasty, f"trainer.max_steps={steps + 5}"]) == 0
    assert f"runs/s1 holds a run at step {steps} of {steps + 5}: the job resumes it" in capsys.readouterr().err


@pytest.mark.slurm
def test_failing_job_reports_its_exit_code(tiny_train_inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()  # exists (the launch check passes) but holds no shards: the job finds out
    out = _launch([RECIPE, "--cluster", "local", "--job-name", "bad", "--wait", "--",
                   *_data_overrides(tiny_train_inputs), f"data.shards={tmp_path / 'empty'}"], capsys, rc=1)
    job = _job_id(out)
    assert re.search(rf"job {job}: FAILED \(exit code [1-9]", out), out
    log = (tmp_path / "logs" / "slurm" / f"bad-{job}.out").read_text()
    # the data module's own error reaches the log (its wording is the data module's)
    assert any(str(tmp_path / "empty") in line and "Error" in line for line in log.splitlines()), log[-3000:]
    assert "[ecomvlm] exit code" in log and "requeueing" not in log
