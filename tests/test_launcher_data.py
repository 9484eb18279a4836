"""`ecomvlm launch data {curate,item-intel}` (launcher/data.py): the data pipelines as SLURM job arrays.

Dry runs check the rendered scripts (hostile values stay data when bash reads them, array sizes, the afterok chain,
no API key in a script) and the one-line refusals before anything is queued; on the local SLURM (.ci/start_slurm.sh)
a small curation against the scripted loopback endpoints runs as 2-task arrays, ends with the same output as the
single-process run, and a re-submit finds every partition done (no endpoint call, no output rewritten).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ecomvlm.cli import main
from ecomvlm.data_modules.curation.scripted import ScriptedEndpoints
from ecomvlm.data_modules.curation.synthetic import make_raw_listings, read_truth

SECRET = "sk-launch-data-secret-0123456789"
HOSTILE = "m'; touch /tmp/ecomvlm_data_pwned; echo '$(id)`id`"


def _curate_args(raw: str, work: str, url: str, *extra: str) -> list[str]:
    return [raw, "--work", work, "--captioner-url", url, "--captioner-model", "cap-test", "--verifier-url", url,
            "--verifier-model", "ver-test", "--captioner-key-env", "LAUNCH_DATA_KEY", "--verifier-key-env",
            "LAUNCH_DATA_KEY", *extra]


def _scripts(out: str) -> list[tuple[str, str]]:
    """(header, script) of each job of a dry run."""
    parts = re.split(r"^(# ---- job \d+ of \d+: .*----)\n", out, flags=re.M)[1:]
    return list(zip(parts[0::2], parts[1::2]))


def _step_words(script: str) -> list[list[str]]:
    """The words bash gives each stage command (after `step NAME`), as bash itself splits them."""
    body = script.split("\n}\n", 1)[1].split("\nrc=$?", 1)[0]
    out = []
    for call in body.split("&& \\\n"):
        words = shlex.split(call)
        assert words[0] == "step"
        out.append(words[2:])
    return out


def _dry(argv: list[str], capsys, rc: int = 0) -> tuple[str, str]:
    code = main(["launch", "data", *argv])
    out, err = capsys.readouterr()
    assert code == rc, (out, err)
    return out, err


@pytest.fixture
def no_slurm_here(tmp_path, monkeypatch):
    """Dry runs that do not depend on whether a SLURM answers here (its queue checks need squeue/scontrol)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(shutil.which("bash"))
    monkeypatch.setenv("PATH", str(bin_dir))


@pytest.fixture
def raw(tmp_path) -> Path:
    (tmp_path / "raw").mkdir()
    f = tmp_path / "raw" / "listings.jsonl"
    f.write_text('{"item_id": "a", "title": "t", "image_paths": ["a.png"]}\n')
    return f


def test_curate_run_dry_run_is_a_chain_of_arrays_with_hostile_values_kept_as_data(tmp_path, raw, capsys, monkeypatch,
                                                                                   no_slurm_here):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAUNCH_DATA_KEY", SECRET)
    args = _curate_args("raw/listings.jsonl", "work/cur", "http://gpu1:8000/v1", "--seed", "3")
    args[args.index("ver-test")] = HOSTILE
    out, err = _dry(["curate", "--cluster", "local", "--array", "3", "--dry-run", "--", "run", *args], capsys)
    jobs = _scripts(out)
    assert [h.split(": ", 1)[1].split(" (")[0] for h, _ in jobs] == [
        "curate-cur-prep", "curate-cur-image", "curate-cur-caption", "curate-cur-verify", "curate-cur-finish"]
    stages = [[w[w.index("curate") + 1] for w in _step_words(s)] for _, s in jobs]
    assert stages == [["ingest", "clean"], ["image"], ["caption"], ["verify"], ["generate", "export"]]
    for k, (header, script) in enumerate(jobs):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash
        array = re.findall(r"^#SBATCH --array=(.*)$", script, re.M)
        assert array == (["0-2"] if k in (1, 2, 3) else []), (k, header)
        assert "#SBATCH --output=logs/slurm/%x-" + ("%A_%a.out" if array else "%j.out") in script
        assert "#SBATCH --open-mode=append" in script and "#SBATCH --requeue" in script
        assert "MAX_REQUEUES=2" in script and "#SBATCH --signal=B:USR1@60" in script  # local.yaml's cap, signal
        assert "gpus" not in script and "--mem" not in script  # CPU tasks
        dep = re.findall(r"^#SBATCH --dependency=(.*)$", script, re.M)
        assert dep == ([f"afterok:<id of job {k}>"] if k else []), (k, dep)
        for words in _step_words(script):
            # bash reads the hostile model name back as one word, exactly as given
            assert words[words.index("--verifier-model") + 1] == HOSTILE
            assert words[words.index("--captioner-key-env") + 1] == "LAUNCH_DATA_KEY"
            assert words[words.index("--work") + 1] == "work/cur" and "raw/listings.jsonl" in words
    assert SECRET not in out and SECRET not in err
    assert out.count("only their names are here: LAUNCH_DATA_KEY") == 5
    assert not Path("/tmp/ecomvlm_data_pwned").exists()


def test_named_stages_item_intel_and_cluster_data_settings(tmp_path, raw, capsys, monkeypatch, no_slurm_here):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = "http://gpu1:8000/v1"
    # one stage, chained after a job given by hand: one array, afterok on it; the unset key variable is a note
    out, err = _dry(["curate", "--cluster", "local", "--array", "4", "--after", "123", "--skip-path-check",
                     "--dry-run", "--", "caption", "--work", "w", "--captioner-url", url, "--captioner-model", "c"],
                    capsys)
    (h, s), = _scripts(out)
    assert "4 array tasks: curate caption), after 123 succeeded" in h and "#SBATCH --array=0-3" in s
    assert "#SBATCH --dependency=afterok:123" in s and "#SBATCH --kill-on-invalid-dep=yes" in s
    assert "OPENAI_API_KEY is not set here" in err
    # ingest is not partitioned: one task, said so
    out, err = _dry(["curate", "--cluster", "local", "--array", "4", "--dry-run", "--", "ingest", str(raw), "--work",
                     "w"], capsys)
    assert "--array" not in _scripts(out)[0][1] and "curate ingest is not partitioned: one task, not 4" in err
    # item intelligence: `all` = one array through every stage, then one job building the sets and the report
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "i1", "images": ["a.png"]}\n')
    ii = ["--items", str(items), "--work", "ii", "--teacher-url", url, "--teacher-model", "t", "--grounder-url", url,
          "--grounder-model", "g", "--teacher-api-key-env", "TEACHER_KEY"]
    out, _ = _dry(["item-intel", "--cluster", "local", "--array", "5", "--job-name", "lab", "--dry-run", "--", "all",
                   *ii], capsys)
    (h1, s1), (h2, s2) = _scripts(out)
    assert h1.startswith("# ---- job 1 of 2: lab-stages (5 array tasks") and "#SBATCH --array=0-4" in s1
    assert _step_words(s1)[0][-1] == "--no-finish" and "--no-finish" not in _step_words(s2)[0]
    assert "lab-finish (1 task" in h2 and "#SBATCH --dependency=afterok:<id of job 1>" in s2
    assert "--container-env" not in s1 and "only their names are here: OPENAI_API_KEY TEACHER_KEY" in s1
    # a cluster's data_* settings: own partition, a GPU only when it says so, its own extra options; container
    mount = tmp_path
    (tmp_path / "gpu_data.yaml").write_text(f"""nodes: 1
gpus_per_node: 8
partition: batch
time: "04:00:00"
container_image: /images/ecomvlm.sqsh
container_mounts: ["{mount}:{mount}"]
extra_sbatch: ["--exclusive"]
data_partition: cpu
data_cpus_per_task: 4
data_gpus_per_node: 1
data_mem: 16G
data_time: "12:00:00"
data_extra_sbatch: ["--qos=data"]
""")
    out, _ = _dry(["item-intel", "--cluster", str(tmp_path / "gpu_data.yaml"), "--array", "2", "--dry-run", "--",
                   "all", *ii], capsys)
    s = _scripts(out)[0][1]
    for line in ("--partition=cpu", "--cpus-per-task=4", "--gpus-per-node=1", "--mem=16G", "--time=12:00:00",
                 "--qos=data"):
        assert f"#SBATCH {line}\n" in s, line
    assert "--exclusive" not in s and "--partition=batch" not in s
    words = _step_words(s)[0]
    assert "--container-image=/images/ecomvlm.sqsh" in words and "--no-container-mount-home" in words
    assert "TEACHER_KEY" in next(w for w in words if w.startswith("--container-env="))
    # the shipped GPU cluster: its training GPUs, memory and --exclusive are not asked for by data stages
    out, _ = _dry(["curate", "--cluster", "h100_8x", "--array", "2", "--skip-path-check", "--dry-run", "--",
                   "clean", "--work", "w2"], capsys, rc=2)  # clean reads ingest, not finished
    out, _ = _dry(["curate", "--cluster", "h100_8x", "--array", "2", "--dry-run", "--", "ingest", str(raw),
                   "--work", "w2"], capsys)
    s = _scripts(out)[0][1]
    assert "--partition=batch" in s and "gpus" not in s and "--exclusive" not in s and "--mem" not in s


@pytest.mark.parametrize("argv, message", [
    (["curate", "--array", "0", "--", "ingest", "RAW", "--work", "w"], "--array 0: a data stage needs at least 1"),
    (["curate", "--", "ingest", "missing.jsonl", "--work", "w"], "input missing.jsonl: does not exist on this host"),
    (["curate", "--", "caption", "--work", "w"], "--captioner-url and --captioner-model: the caption stage calls"),
    (["curate", "--after", "1", "--", "caption", "--work", "w", "--captioner-url", "gpu1:8000", "--captioner-model",
      "c"], "--captioner-url 'gpu1:8000': not an http(s) URL"),
    (["curate", "--after", "1", "--", "caption", "--work", "w", "--captioner-url", "http://u:pw@gpu1/v1",
      "--captioner-model", "c"], "the URL carries a user or password"),
    (["curate", "--after", "1", "--", "caption", "--work", "w", "--captioner-url", "http://gpu1/v1",
      "--captioner-model", "c", "--captioner-key-env", "sk-abc123"], "--captioner-key-env 'sk-abc123': expected the "
                                                                     "NAME of the environment variable"),
    (["curate", "--after", "1", "--", "caption", "--work", "w", "--captioner-url", "http://gpu1/v1",
      "--captioner-model", SECRET], "the value of OPENAI_API_KEY (an API key) appears in the stage arguments"),
    (["curate", "--", "ingest", "RAW", "--work", "w\nrm -rf /"], "contains a control character"),
    (["curate", "--", "ingest", "RAW", "--work", "w", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["curate", "--", "ingest", "RAW", "--work", "w", "--shares", "vqa=x"], "--shares: 'x' is not a number"),
    (["curate", "--", "verify", "--work", "w", "--verifier-url", "http://g/v1", "--verifier-model", "v"],
     "curate verify reads stage 'caption', which is not finished under w: launch caption first and chain"),
    (["curate", "--", "report", "--work", "w"], "curate report prints the export's report"),
    (["curate", "--", "--work", "w", "ingest", "RAW"], "put the stage first after --"),
    (["curate", "--nodes", "2", "--", "ingest", "RAW", "--work", "w"], "--nodes: not for data stages"),
    (["curate", "--job-name", "a b", "--", "ingest", "RAW", "--work", "w"], "--job-name 'a b': use up to 100"),
    (["item-intel", "--", "ground", "--work", "w", "--grounder-url", "http://g/v1", "--grounder-model", "g"],
     "item-intel ground reads the ingested items (input.json) under w, not finished"),
    (["item-intel", "--", "all", "--work", "w"], "--teacher-url and --teacher-model: the all stage calls"),
    (["item-intel", "--", "ingest", "--work", "w"], "item-intel ingest: --items ITEMS.jsonl is required"),
    (["item-intel", "--", "synth", "--out", "s"], "run `ecomvlm data item-intel synth --out DIR` here"),
    (["sweep", "--", "x"], "launch data 'sweep': expected one of curate, item-intel"),
])
def test_refused_before_queueing_with_one_line_naming_the_input(argv, message, tmp_path, raw, capsys, monkeypatch,
                                                               no_slurm_here):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    argv = [str(raw) if a == "RAW" else a for a in argv]
    code = main(["launch", "data", *argv[:1], "--cluster", "local", "--dry-run", *argv[1:]])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (out, err)
    assert message in err and err.count("\n") == 1, err
    assert SECRET not in err


def test_array_flag_is_refused_for_training_recipes(capsys):
    assert main(["launch", "tiny_siglip_qwen3_stage1_alignment", "--array", "2", "--dry-run"]) == 2
    assert "--array 2: for data stages" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real SLURM
def _outputs(work: Path) -> dict[str, object]:
    exp = work / "export"
    report = json.loads((exp / "report.json").read_text())
    return {"train": json.loads((exp / "stage3_curated.json").read_text()),
            "eval": (exp / "eval" / "ifeval.jsonl").read_text(),
            "stages": {k: v["fates"] for k, v in report["stages"].items()},
            "families": report["instructions"]["families"]}


def _partitions_run(log: str, stage: str) -> tuple[int, int]:
    m = re.search(rf"^{stage}: \d+ in, \d+ written.*\[(\d+) of (\d+) partitions run\]", log, re.M)
    assert m, log[-2000:]
    return int(m.group(1)), int(m.group(2))


@pytest.mark.slurm
def test_curation_as_two_task_arrays_matches_one_process_and_a_resubmit_finds_it_done(tmp_path, function_endpoint,
                                                                                      capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAUNCH_DATA_KEY", SECRET)  # the jobs get it from the environment sbatch passes on
    raw = make_raw_listings(tmp_path / "data", n=40, n_eval=6, seed=3, image_size=72, bad=False)
    url, handler = function_endpoint
    endpoints = ScriptedEndpoints(read_truth(raw["truth"]))
    handler.respond = endpoints.respond
    common = ["--image-root", raw["image_root"], "--partition-size", "8", "--concurrency", "4", "--timeout", "20",
              "--no-shards"]
    # the same pipeline in this process, one worker: the reference
    assert main(["data", "curate", "run", *_curate_args(raw["raw"], str(tmp_path / "single"), url, *common)]) == 0
    single_calls = dict(endpoints.calls)
    capsys.readouterr()
    reference = _outputs(tmp_path / "single")
    assert len(reference["train"]) >= 35 and reference["stages"]["caption"] == {"written": 46}  # real work to match

    launch = ["launch", "data", "curate", "--cluster", "local", "--array", "2", "--wait", "--", "run",
              *_curate_args(raw["raw"], "arr", url, *common)]
    assert main(launch) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    ids = dict(re.findall(r"^submitted job (\d+) curate-arr-(\w+) ", out, re.M))
    ids = {stage: job for job, stage in ids.items()}
    assert list(ids) == ["prep", "image", "caption", "verify", "finish"], out
    assert f"job {ids['caption']} curate-arr-caption: 2 of 2 tasks completed" in out
    assert f"job {ids['finish']} curate-arr-finish: 1 of 1 task completed" in out
    assert _outputs(tmp_path / "arr") == reference
    assert sum(endpoints.calls.values()) == 2 * sum(single_calls.values())  # each listing asked once per run
    logs = tmp_path / "logs" / "slurm"
    for stage in ("caption", "verify"):
        runs = [_partitions_run((logs / f"curate-arr-{stage}-{ids[stage]}_{t}.out").read_text(), stage)
                for t in (0, 1)]
        assert runs == [(3, 6), (3, 6)], (stage, runs)  # 46 listings / 8: 6 partitions, 3 per task
    script = (logs / "scripts" / "curate-arr-caption.sbatch").read_text()
    assert SECRET not in script and f"#SBATCH --dependency=afterok:{ids['image']}" in script

    # the same command again: every partition is found done, nothing is asked or rewritten
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "arr").glob("*/part-*.jsonl")}
    calls = dict(endpoints.calls)
    assert main(launch) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    again = {stage: job for job, stage in re.findall(r"^submitted job (\d+) curate-arr-(\w+) ", out, re.M)}
    for stage in ("caption", "verify"):
        for t in (0, 1):
            log = (logs / f"curate-arr-{stage}-{again[stage]}_{t}.out").read_text()
            assert _partitions_run(log, stage) == (0, 6)
    assert endpoints.calls == calls
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "arr").glob("*/part-*.jsonl")} == parts
    assert _outputs(tmp_path / "arr") == reference


@pytest.mark.slurm
def test_time_limit_warning_requeues_a_data_job_up_to_the_cap(tmp_path, raw, capsys, monkeypatch):
    """The batch shell's time-limit warning (what --signal=B:USR1@N sends, here at once with scancel --batch): the
    stage is stopped and the job requeued, once (max_requeues: 1); the second warning ends it with 75."""
    from ecomvlm.launcher import slurm

    monkeypatch.chdir(tmp_path)
    fake = tmp_path / "fake_python"  # a stage that takes long: the job script is what is tested
    fake.write_text('#!/bin/bash\necho "fake stage: $* restart ${SLURM_RESTART_COUNT:-0}"\nsleep 120\n')
    fake.chmod(0o755)
    (tmp_path / "c.yaml").write_text(f"nodes: 1\ngpus_per_node: 0\ntasks_per_node: 1\ntime: '00:05:00'\n"
                                     f"python: {fake}\nlog_dir: logs\nruns_root: runs\nrequeue: true\n"
                                     f"max_requeues: 1\nsignal_seconds: 30\n")
    assert main(["launch", "data", "curate", "--cluster", "c.yaml", "--", "ingest", str(raw), "--work", "w"]) == 0
    job = re.search(r"submitted job (\d+)", capsys.readouterr().out).group(1)
    log = tmp_path / "logs" / f"curate-w-ingest-{job}.out"

    def warn_when_running(restart: str) -> None:
        for _ in range(120):
            text = log.read_text() if log.is_file() else ""
            if f"fake stage: -m ecomvlm.cli data curate ingest {raw} --work w restart {restart}" in text:
                subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
                return
            rec = (slurm.job_states(job) or {}).get("", {})
            if rec.get("reason") == "BeginTime":  # SLURM holds a requeued job ~2 min; release it
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
            time.sleep(0.5)
        raise AssertionError(log.read_text() if log.is_file() else "no log")

    warn_when_running("0")
    warn_when_running("1")
    final = slurm.wait(job, [""], poll_s=1, timeout_s=120, report=lambda _: None)[""]
    text = log.read_text()
    assert (final["state"], final["exit_code"], final["restarts"]) == ("FAILED", "75:0", "1"), text
    assert text.count("SIGUSR1: the time limit is near, stopping the stage") == 2
    assert f"requeueing {job} (restart 1 of at most 1)" in text and "requeue cap reached (1 restarts)" in text
