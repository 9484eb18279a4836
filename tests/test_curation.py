"""Visual-verification curation (data_modules/curation): synthetic raw listings with known truth through the whole
pipeline, against scripted captioner/verifier endpoints on loopback (the real client and workers)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ecomvlm.data_modules.curation import generate as gen
from ecomvlm.data_modules.curation.endpoints import EndpointSpec
from ecomvlm.data_modules.curation.pipeline import STAGES, CurateConfig, StageNotReady, run_all, run_generate
from ecomvlm.data_modules.curation.prompts import load_prompt
from ecomvlm.data_modules.curation.scripted import ScriptedEndpoints
from ecomvlm.data_modules.curation.synthetic import BAD_CASES, make_raw_listings, read_truth
from ecomvlm.data_modules.partitions import StageRun
from ecomvlm.eval import ifeval

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-curation-test-secret-0123456789"


def _config(work: Path, raw: dict, url: str, **kw) -> CurateConfig:
    # 2 retries: a request slowed past its timeout by a loaded machine is asked again, not counted as a failure
    common = {"base_url": url, "api_key_env": "CURATION_TEST_KEY", "concurrency": 4, "http_retries": 2,
              "backoff_s": 0.01}
    return CurateConfig(work=work, inputs=[Path(raw["raw"])], image_root=Path(raw["image_root"]),
                        captioner=EndpointSpec(model="cap-test", timeout_s=2.0, **common),
                        verifier=EndpointSpec(model="ver-test", timeout_s=10.0, format_retries=1, **common),
                        partition_size=kw.pop("partition_size", 24), **kw)


@pytest.fixture(scope="module")
def raw_listings(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("curation_raw")
    return make_raw_listings(out, n=110, n_eval=12, seed=5, image_size=72)


@pytest.fixture
def scripted(function_endpoint, raw_listings):
    url, handler = function_endpoint
    endpoints = ScriptedEndpoints(read_truth(raw_listings["truth"]), slow_s=4.0)
    handler.respond = endpoints.respond
    return url, handler, endpoints


def _examples(work: Path, stage: str) -> dict[str, str]:
    """{listing id: fate} of the dropped/failed records the manifests name (each bad case is alone in its fate)."""
    out = {}
    for m in (work / stage).glob("*.done.json"):
        for fate, ex in json.loads(m.read_text())["examples"].items():
            for e in ex:
                out[e.split(":", 1)[0]] = fate
    return out


def test_pipeline_truth_fates_shares_constraints(tmp_path, scripted, raw_listings, monkeypatch):
    url, handler, endpoints = scripted
    monkeypatch.setenv("CURATION_TEST_KEY", SECRET)
    truth = read_truth(raw_listings["truth"])
    work = tmp_path / "work"
    reports = run_all(_config(work, raw_listings, url))
    rep = reports["export"]

    # counts add up: every stage's input = written + dropped + failed, and is the previous stage's written
    prev_written = None
    for name in STAGES[:-1]:
        st = rep["stages"][name]
        assert sum(st["fates"].values()) == st["input"], (name, st)
        if prev_written is not None:
            assert st["input"] == prev_written, name
        prev_written = st["fates"].get("written", 0)
    assert rep["stages"]["ingest"]["input"] == len(truth)

    # every bad input got its own reason, in the stage where it happens; nothing else was lost
    fates_by_id: dict[str, str] = {}
    for name in STAGES[1:-1]:
        fates_by_id.update(_examples(work, name))
    for case, expect, _ in BAD_CASES:
        lid = next(t["id"] for t in truth.values() if t.get("case") == case)
        if expect == "written":
            assert lid not in fates_by_id, (case, fates_by_id.get(lid))
        else:
            assert fates_by_id.get(lid) == expect, (case, fates_by_id.get(lid))
    not_written = Counter(f for st in rep["stages"].values() for f, n in st["fates"].items() for _ in range(n)
                          if f != "written")
    assert sum(not_written.values()) == sum(1 for _, e, _ in BAD_CASES if e != "written")
    # the listing whose first caption request got a 503 was retried and written
    assert next(t["id"] for t in truth.values() if t.get("case") == "caption_5xx_once") in endpoints.seen_503

    # verification: exactly the aspects drawn in the main image survive (wrong colours, size, material, ... not)
    verified = dict(StageRun("verify", work, None).outputs())
    good = [t for t in truth.values() if t["expect"] == "written"]
    assert len(verified) == len(good)
    for t in good:
        assert dict(map(tuple, verified[t["id"]]["visible"])) == t["visible"], t["id"]
    rates = rep["verified_aspect_rate"]
    assert set(rates) >= {"T-Shirt", "Mug"} and all(0 < r["rate"] < 1 for r in rates.values())

    # instructions: family shares within 1 point of the configured ones, every constraint holds
    train = json.loads((work / "export" / "stage3_curated.json").read_text())
    evals = [json.loads(x) for x in (work / "export" / "eval" / "ifeval.jsonl").read_text().splitlines()]
    assert len(train) + len(evals) == rep["stages"]["generate"]["fates"]["written"]
    assert len(evals) == sum(1 for t in good if t["split"] == "eval")
    shares = Counter(r["family"] for r in train)
    for fam, want in gen.FAMILY_SHARES.items():
        assert abs(100 * shares[fam] / len(train) - want) <= 1.0, (fam, shares)
    n_constraints = 0
    held_out = [{"conversations": [{"value": e["prompt"]}, {"value": e["answer"]}], "family": "pif", **e}
                for e in evals]
    for r in train + held_out:
        cs = r.get("constraints") or []
        n_constraints += len(cs)
        if r["family"] == "pif":
            assert cs, r["id"]
        assert all(ifeval.check_all(r["conversations"][-1]["value"], cs, r["conversations"][0]["value"])), r["id"]
        for c in cs:  # the prompt states every constraint it is checked against
            assert ifeval.describe(c["instruction_id"], c["kwargs"]) in r["conversations"][0]["value"]
    assert rep["instructions"]["constraints_checked"] >= n_constraints > 0
    assert len({r["subtask"] for r in train}) >= 15
    # targets only carry verified facts: no size / material / MPN value of a listing appears in its answers
    for r in train:
        t = truth[r["id"].rsplit("-", 1)[0]]
        assert t["mpn"] not in json.dumps(r["conversations"])

    # provenance: prompt name + version + sha256 per record
    cap, ver = load_prompt("caption").meta(), load_prompt("verify").meta()
    assert all(r["prompts"] == {"caption": cap, "verify": ver} for r in train)
    assert len(cap["sha256"]) == 64 and cap["version"] == "v1"

    # the outputs stage 3 reads: shards of every training record, a report with a plot
    assert rep["shards"]["samples"] == len(train)
    assert (work / "export" / "report.png").stat().st_size > 1000
    assert "| caption |" in (work / "export" / "report.md").read_text()

    # the API key went to the endpoint only: never into a file of the run
    for p in work.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".md"):
            assert SECRET not in p.read_text(errors="replace"), p

    # a re-run asks nothing and re-does nothing
    before = handler.requests
    again = run_all(_config(work, raw_listings, url))
    assert handler.requests == before
    assert all(again[n]["partitions_run"] == 0 for n in STAGES[1:-1])
    assert json.loads((work / "export" / "stage3_curated.json").read_text()) == train

    # a new verifier prompt re-does verify and what follows it, never the captions
    v2 = tmp_path / "verify_v2.yaml"
    v2.write_text(Path(load_prompt("verify").path).read_text().replace("version: v1", "version: v2"))
    cfg2 = _config(work, raw_listings, url, shards=False)
    cfg2.prompts = {"caption": "caption", "verify": str(v2)}
    third = run_all(cfg2)
    assert third["caption"]["partitions_run"] == 0
    assert third["verify"]["partitions_run"] == third["verify"]["partitions"] > 1
    retrained = json.loads((work / "export" / "stage3_curated.json").read_text())
    assert {r["prompts"]["verify"]["version"] for r in retrained} == {"v2"}


def test_cache_answers_a_fresh_work_folder_with_changed_partitions(tmp_path, scripted, raw_listings):
    url, handler, _ = scripted
    work = tmp_path / "w"
    run_all(_config(work, raw_listings, url, shards=False))
    first = handler.requests
    # other partitions, same cache: every successful answer is reused, only the failures are asked again
    for name in STAGES[1:]:
        shutil.rmtree(work / name, ignore_errors=True)
    run_all(_config(work, raw_listings, url, shards=False, partition_size=17))
    asked = handler.requests - first
    failing = sum(1 for _, e, f in BAD_CASES if f and e != "written")
    assert 0 < asked <= 3 * failing  # failed calls (with their retries) are asked again, nothing else


def test_stage_needs_its_input_and_bad_settings_are_named(tmp_path, raw_listings):
    cfg = CurateConfig(work=tmp_path / "empty", inputs=[Path(raw_listings["raw"])])
    with pytest.raises(StageNotReady, match="verify"):
        run_generate(cfg)
    with pytest.raises(ValueError, match="unknown families"):
        CurateConfig(work=tmp_path, shares={"vqa": 50, "chat": 50})
    with pytest.raises(ValueError, match="sub-tasks"):
        CurateConfig(work=tmp_path, mixes={"dae": {"ocr": 1, "nonsense": 1}})


def test_assignment_shares_and_mixes_are_exact():
    listings = [{"id": f"x{i:05d}", "split": "train"} for i in range(997)]
    shares = {"vqa": 40.0, "dae": 35.0, "pif": 15.0, "listing": 10.0}
    got = gen.assign(listings, shares, gen.SUBTASK_MIX, seed=3)
    fam = Counter(f for f, _ in got.values())
    for f, w in shares.items():
        assert abs(100 * fam[f] / len(listings) - w) < 0.2, fam
    dae = Counter(s for f, s in got.values() if f == "dae")
    total = sum(gen.SUBTASK_MIX["dae"].values())
    for s, w in gen.SUBTASK_MIX["dae"].items():
        assert abs(dae[s] - fam["dae"] * w / total) <= 1.0, (s, dae)
    # the assignment does not depend on the order listings were read in
    assert gen.assign(list(reversed(listings)), shares, gen.SUBTASK_MIX, seed=3) == got


def _partitions_done(stage_dir: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("*.done.json")}


def test_kill_9_mid_run_then_rerun_is_identical(tmp_path, function_endpoint, raw_listings):
    url, handler = function_endpoint
    endpoints = ScriptedEndpoints(read_truth(raw_listings["truth"]), latency_s=0.03, slow_s=4.0)
    handler.respond = endpoints.respond
    args = [sys.executable, "-m", "ecomvlm.cli", "data", "curate", "run", raw_listings["raw"],
            "--image-root", raw_listings["image_root"], "--captioner-url", url, "--captioner-model", "cap-test",
            "--verifier-url", url, "--verifier-model", "ver-test", "--concurrency", "2", "--retries", "2",
            "--timeout", "2", "--partition-size", "16", "--no-shards"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--work", str(killed)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and len(_partitions_done(killed / "caption")) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = _partitions_done(killed / "caption")
    assert 2 <= len(done_before) < 7, "the kill came too late to test a resume"
    assert not (killed / "export" / "stage3_curated.json").exists()

    rerun = subprocess.run([*args, "--work", str(killed)], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    n_parts = json.loads((killed / "caption" / "plan.json").read_text())["partitions"]
    assert f"[{n_parts - len(done_before)} of {n_parts} partitions run]" in rerun.stderr.replace("\n", " ")
    after = _partitions_done(killed / "caption")
    assert all(after[k] == v for k, v in done_before.items())  # finished partitions were not written again

    # the same run, never interrupted, in this process (operational endpoint settings do not change outputs)
    clean = tmp_path / "clean"
    run_all(_config(clean, raw_listings, url, partition_size=16, shards=False, cache=False))
    for rel in ("export/stage3_curated.json", "export/eval/ifeval.jsonl"):
        assert (killed / rel).read_bytes() == (clean / rel).read_bytes(), rel


def test_demo_curation_gives_clean_stage3_json(tmp_path):
    from ecomvlm.data_modules.curation.demo import curate_synthetic_for_demo
    from ecomvlm.data_modules.llava_json import record_problem

    t0 = time.perf_counter()
    path = curate_synthetic_for_demo(tmp_path / "data", tmp_path / "work", 60)
    took = time.perf_counter() - t0
    recs = json.loads(path.read_text())
    # 60 listings less the 13 bad ones the pipeline must not train on (the 5xx-once listing is retried and kept)
    assert len(recs) == 60 - sum(1 for _, e, _ in BAD_CASES if e != "written")
    assert all(record_problem(r) is None and Path(r["image"]).is_file() for r in recs)
    assert (tmp_path / "work" / "export" / "shards" / "manifest.json").is_file()
    assert took < 60


# ------------------------------------------------------------------ offline vLLM engines (endpoint kind "vllm")
class ScriptedEngine:
    """``vllm.LLM.chat``'s contract (OpenAI-format conversations in, texts out) answered from the synthetic truth by
    the scripted curation endpoints; records each call's size. ``fail_on``: a text whose conversation makes the
    call raise, as vLLM does for a prompt longer than max_model_len."""

    def __init__(self, truth: dict, fail_on: str | None = None) -> None:
        self.endpoints, self.fail_on, self.calls = ScriptedEndpoints(truth), fail_on, []

    def chat(self, convs, params):
        self.calls.append(len(convs))
        if self.fail_on and any(self.fail_on in json.dumps(c) for c in convs):
            raise ValueError("prompt is longer than the maximum model length")
        texts = []
        for conv in convs:
            body = {"messages": conv, **({"response_format": {"type": "json_schema"}} if params["json_schema"] else {})}
            status, content, _ = self.endpoints.respond(body)
            assert status == 200, content
            texts.append(content)
        return texts, [0.0] * len(convs), [[12, 5]] * len(convs)


def test_offline_engine_endpoints_batch_and_give_the_servers_result(tmp_path, monkeypatch):
    """kind=vllm: the stages' requests reach the engine in batched calls (at most `concurrency` each), the verified
    aspects are exactly the truth's, and a call that fails for one listing fails only that listing."""
    from ecomvlm.eval import engine_client

    raw = make_raw_listings(tmp_path / "raw", n=70, seed=3, image_size=64, bad=False)
    truth = read_truth(raw["truth"])
    poison = next(t for t in truth.values() if t["expect"] == "written")["mpn"]  # this listing's verify call fails
    engines = {"cap-engine": ScriptedEngine(truth), "ver-engine": ScriptedEngine(truth, fail_on=poison)}
    started = []

    def shared_engine(model, *, python=None, max_images=1, engine=None):
        started.append((model, max_images, engine))
        return engines[model]

    monkeypatch.setattr(engine_client, "shared_engine", shared_engine)
    common = {"kind": "vllm", "concurrency": 16, "engine": {"max_model_len": 4096}}
    cfg = CurateConfig(work=tmp_path / "w", inputs=[Path(raw["raw"])], image_root=Path(raw["image_root"]),
                       captioner=EndpointSpec(model="cap-engine", max_images=1, **common),
                       verifier=EndpointSpec(model="ver-engine", max_images=0, **common),
                       partition_size=30, shards=False)
    rep = run_all(cfg)["export"]

    cap = engines["cap-engine"].calls
    assert sum(cap) == rep["stages"]["caption"]["input"] == len(truth)
    assert max(cap) <= 16 and len(cap) <= len(truth) // 4  # batched, never above the configured size
    assert {("cap-engine", 1), ("ver-engine", 0)} == {(m, n) for m, n, e in started if e == {"max_model_len": 4096}}
    ver = rep["stages"]["verify"]
    assert ver["fates"] == {"written": len(truth) - 1 - ver["fates"].get("dropped:no_visible_aspect", 0),
                            **({"dropped:no_visible_aspect": ver["fates"]["dropped:no_visible_aspect"]}
                               if "dropped:no_visible_aspect" in ver["fates"] else {}), "failed:engine": 1}
    assert ver["counters"]["verifier:engine_calls_split"] == 1
    verified = dict(StageRun("verify", cfg.work, None).outputs())
    for t in truth.values():
        if t["expect"] == "written" and t["mpn"] != poison:
            assert dict(map(tuple, verified[t["id"]]["visible"])) == t["visible"], t["id"]

    # a re-run asks the engines nothing (finished partitions are skipped); a fresh work folder with the same cache
    # asks only the failed listing again
    n_cap, n_ver = sum(cap), sum(engines["ver-engine"].calls)
    run_all(cfg)
    assert sum(cap) == n_cap and sum(engines["ver-engine"].calls) == n_ver
    for name in STAGES[1:]:
        shutil.rmtree(cfg.work / name, ignore_errors=True)
    run_all(cfg)
    assert sum(cap) == n_cap and sum(engines["ver-engine"].calls) == n_ver + 1


def test_engine_endpoint_settings_are_checked():
    with pytest.raises(ValueError, match="no base_url"):
        EndpointSpec(kind="vllm", model="m", base_url="http://x:8000/v1")
    with pytest.raises(ValueError, match="openai .* or vllm"):
        EndpointSpec(kind="tgi", model="m", base_url="http://x")
    with pytest.raises(ValueError, match="no such interpreter"):
        EndpointSpec(kind="vllm", model="m", python="/nonexistent/python")


def test_trust_seller_ablation_keeps_what_verification_removes(tmp_path, scripted, raw_listings):
    """verify=trust_seller (the no-verification ablation, --trust-seller-aspects): no verifier is asked, every cleaned
    aspect is kept, so the wrong colours and the invisible MPN / size / material reach the instructions; the verified
    run of the same listings never has them."""
    url, handler, endpoints = scripted
    truth = read_truth(raw_listings["truth"])
    cfg = _config(tmp_path / "trust", raw_listings, url, shards=False, verify="trust_seller")
    cfg.verifier = None
    rep = run_all(cfg)["export"]
    assert endpoints.calls["verify"] == 0
    trusted = dict(StageRun("verify", cfg.work, None).outputs())
    cleaned = dict(StageRun("clean", cfg.work, None).outputs())
    assert trusted and all(set(v["verdicts"].values()) == {"trusted"} for v in trusted.values())
    assert all(v["visible"] == cleaned[k]["aspects"] for k, v in trusted.items())
    assert rep["stages"]["verify"]["fates"] == {"written": rep["stages"]["verify"]["input"]}
    wrong_colour = [t["id"] for t in truth.values() if t["id"] in trusted and "Colour" not in t["visible"]
                    and t["expect"] == "written"]
    assert wrong_colour  # the seller's wrong colour is kept as a fact
    train = json.loads((cfg.work / "export" / "stage3_curated.json").read_text())
    assert any(truth[r["id"].rsplit("-", 1)[0]]["mpn"] in json.dumps(r["conversations"]) for r in train)
    with pytest.raises(ValueError, match="model or trust_seller"):
        _config(tmp_path / "x", raw_listings, url, verify="maybe")


def test_engine_that_cannot_start_is_a_clear_error(tmp_path, raw_listings, monkeypatch):
    from ecomvlm.cli import main
    from ecomvlm.eval import engine_client

    def no_vllm(model, **kw):
        raise ImportError("no module named vllm")

    monkeypatch.setattr(engine_client, "shared_engine", no_vllm)
    with pytest.raises(SystemExit, match="could not start the vLLM engine for 'cap-dir'.*no module named vllm"):
        main(["data", "curate", "run", raw_listings["raw"], "--work", str(tmp_path / "w"), "--image-root",
              raw_listings["image_root"], "--captioner-engine", "vllm", "--captioner-model", "cap-dir",
              "--verifier-engine", "vllm", "--verifier-model", "ver-dir", "--no-shards"])
