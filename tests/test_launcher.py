"""`ecomvlm launch`: rendering, safe quoting, validation before submission, and real jobs on the local SLURM."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from ecomvlm.cli import main
from ecomvlm.launcher.slurm import load_cluster, parse_sweep, render, validate

RECIPE = "tiny_siglip_qwen3_stage1_alignment"


def _data_overrides(w: Path) -> list[str]:
    return [f"tokenizer.path={w / 'tok'}", f"data.shards={w / 's1'}", "trainer.max_steps=2", "trainer.save_every=2",
            "data.global_batch_size=4", "data.max_seq_length=192", "data.num_workers=0", "model.encoder.image_size=32"]


def test_rendered_script_runs_with_hostile_values_kept_as_data(tmp_path):
    """The whole sbatch script runs (stub srun/scontrol on PATH): the recipe process gets exactly the override
    strings given, in order, and the shell never executes any part of them."""
    import os
    import stat

    cluster = load_cluster("local")
    pwned = tmp_path / "pwned"
    nasty = f"run.note=x'; touch {pwned}; echo '$(touch {pwned})"
    script = render(RECIPE, ["tokenizer.path=/tmp/a b", nasty], cluster, sweep=parse_sweep(["optim.lr=1e-3,2e-3"]),
                    workdir=str(tmp_path))
    assert "#SBATCH --array=0-1" in script and "#SBATCH --requeue" in script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", 'for a in "$@"; do printf "%s\\n" "$a"; done > "$ARGV_OUT"'),
                       ("scontrol", 'echo node1')):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    (tmp_path / "job.sh").write_text(script)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node1",
           "SLURM_NTASKS": "2", "SLURM_ARRAY_TASK_ID": "1", "ARGV_OUT": str(tmp_path / "argv")}
    proc = subprocess.run(["bash", str(tmp_path / "job.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    tail = argv[argv.index("--config-name"):]
    assert tail[:2] == ["--config-name", RECIPE]
    assert tail[2:] == ["tokenizer.path=/tmp/a b", nasty, "optim.lr=2e-3",
                        f"run.dir=runs/{RECIPE}/1_optim.lr_2e-3"]  # array task 1 of the sweep
    assert not pwned.exists()


def test_bad_overrides_and_impossible_layouts_fail_before_submission(capsys):
    with pytest.raises(ValueError, match="no_such_key"):
        validate(RECIPE, ["tokenizer.path=x", "data.shards=y", "trainer.no_such_key=1"], 2)
    with pytest.raises(ValueError, match="not divisible by TP"):
        validate(RECIPE, ["tokenizer.path=x", "data.shards=y", "parallel=tp4"], 2)
    with pytest.raises(ValueError, match="global_batch_size=6"):
        validate(RECIPE, ["tokenizer.path=x", "data.shards=y", "data.global_batch_size=6",
                          "data.micro_batch_size=2"], 2)
    assert main(["launch", RECIPE, "--cluster", "local", "--dry-run", "--", "parallel=tp8"]) == 2
    assert "impossible parallel layout" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="known: "):
        load_cluster("no_such_cluster")


def test_paper_grid_sweep_is_one_array_job(capsys):
    assert main(["launch", "siglip2_qwen3_8b_stage3_sft", "--cluster", "h100_8x", "--nodes", "2", "--dry-run",
                 "--sweep", "model=siglip2_qwen3_4b,siglip2_qwen3_8b,siglip2_llama3_1_8b", "--",
                 "tokenizer.path=/ckpt/tok", "data.shards=/data/s3"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-2" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --nodes=2" in script
    assert script.count(") SWEEP=(model=") == 3


def _wait(job_id: str, timeout: float = 600) -> dict:
    from ecomvlm.launcher.slurm import job_state

    t0 = time.time()
    while time.time() - t0 < timeout:
        st = job_state(job_id)
        if st["state"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
            return st
        time.sleep(2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def _submit(args: list[str], cwd: Path, capsys) -> str:
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(["launch", *args]) == 0
    finally:
        os.chdir(old)
    out = capsys.readouterr().out
    return out.split("submitted job ")[1].split()[0]


@pytest.mark.slurm
def test_two_task_job_trains_and_a_chained_stage_follows(tiny_train_inputs, tmp_path, capsys):
    w = tiny_train_inputs
    nasty = "run.note=\"x'; touch /tmp/ecomvlm_pwned\""
    j1 = _submit([RECIPE, "--cluster", "local", "--job-name", "s1", "--", *_data_overrides(w), nasty], tmp_path, capsys)
    j2 = _submit(["tiny_siglip_qwen3_stage2_mid", "--cluster", "local", "--job-name", "s2", "--after", j1, "--",
                  *_data_overrides(w), f"init.from_checkpoint={tmp_path / 'runs' / 's1'}"], tmp_path, capsys)
    st1, st2 = _wait(j1), _wait(j2)
    log1 = (tmp_path / "logs" / "slurm" / f"s1-{j1}.out").read_text()
    assert st1["state"] == "COMPLETED" and st1["exit_code"] == "0:0", log1[-3000:]
    assert st2["state"] == "COMPLETED", (tmp_path / "logs" / "slurm" / f"s2-{j2}.out").read_text()[-3000:]
    assert "0: " in log1 and "1: " in log1  # srun --label: both ranks ran
    run1 = tmp_path / "runs" / "s1"
    assert (run1 / "checkpoints" / "step_00000002" / "meta.json").is_file()
    meta = json.loads((run1 / "checkpoints" / "step_00000002" / "meta.json").read_text())
    assert meta["saved_at"]["tensor_model_parallel_size"] == 1  # DP=2 job
    assert json.loads((run1 / "config.json").read_text())["run"]["note"] == "x'; touch /tmp/ecomvlm_pwned"
    assert not Path("/tmp/ecomvlm_pwned").exists()
    s2 = json.loads((tmp_path / "runs" / "s2" / "summary.json").read_text())
    assert s2["init"].startswith(f"checkpoint {run1}")  # stage 2 ran after stage 1 and started from it


@pytest.mark.slurm
def test_failing_job_reports_its_exit_code(tiny_train_inputs, tmp_path, capsys):
    w = tiny_train_inputs
    job = _submit([RECIPE, "--cluster", "local", "--job-name", "bad", "--", *_data_overrides(w),
                   f"data.shards={tmp_path / 'missing'}"], tmp_path, capsys)
    st = _wait(job)
    assert st["state"] == "FAILED" and st["exit_code"] != "0:0"
    log = (tmp_path / "logs" / "slurm" / f"bad-{job}.out").read_text()
    assert "no shard-*.tar found" in log and "[ecomvlm] exit code" in log
