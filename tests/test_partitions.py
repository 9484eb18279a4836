"""Partition workers and the async endpoint client every model-calling data stage shares."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from ecomvlm.data_modules.partitions import Fate, StageRun, array_share, partition_ids
from ecomvlm.eval.openai_client import AsyncChatClient


def upper_stage(records, settings):
    """A stage: writes the upper-cased text, drops empty ones, fails on 'boom'."""
    for r in records:
        settings["_counters"]["seen"] += 1
        if not r["text"]:
            yield Fate.dropped(r["id"], "empty")
        elif r["text"] == "boom":
            yield Fate.failed(r["id"], "endpoint", "HTTP 500 after 4 retries")
        else:
            yield Fate.written(r["id"], r["text"].upper() + settings.get("suffix", ""))


def _records(n):
    return [{"id": f"r{i:03d}", "text": "" if i % 7 == 3 else ("boom" if i % 11 == 5 else f"item {i}")}
            for i in range(n)]


def test_partitions_are_fixed_and_split_over_an_array():
    keys = [f"k{i}" for i in range(10)]
    assert partition_ids(reversed(keys), 4) == partition_ids(keys, 4) == [keys[:4], keys[4:8], keys[8:]]
    shares = [array_share(7, t, 3) for t in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(7)) and shares[0] == [0, 3, 6]
    assert array_share(7, -1, 0) == list(range(7))


def test_every_record_gets_one_fate_and_reruns_skip_finished_partitions(tmp_path):
    recs = _records(50)
    stage = StageRun("upper", tmp_path, upper_stage, settings={"prompt": "v1"}, partition_size=8, workers=2)
    rep = stage.run(recs)
    assert rep["records"] == 50 and rep["partitions_run"] == 7
    written = sum(1 for r in recs if r["text"] and r["text"] != "boom")
    empty, boom = sum(1 for r in recs if not r["text"]), sum(1 for r in recs if r["text"] == "boom")
    assert rep["fates"] == {"written": written, "dropped:empty": empty, "failed:endpoint": boom}
    assert written + empty + boom == 50 and empty == 7 and boom == 4
    assert rep["counters"]["seen"] == 50
    out = dict(stage.outputs())
    assert out["r000"] == "ITEM 0" and len(out) == written
    again = stage.run(recs)
    assert again["partitions_run"] == 0 and again["fates"] == rep["fates"]
    # a changed input or prompt re-does exactly the partitions it touches
    recs[9]["text"] = "changed"
    assert stage.run(recs)["partitions_run"] == 1 and dict(stage.outputs())["r009"] == "CHANGED"
    stage2 = StageRun("upper", tmp_path, upper_stage, settings={"prompt": "v2", "suffix": "!"}, partition_size=8)
    assert stage2.run(recs)["partitions_run"] == 7 and dict(stage2.outputs())["r000"] == "ITEM 0!"
    assert len(list((tmp_path / "upper").glob("part-*-*.jsonl"))) == 7  # stale outputs removed


def test_a_killed_partition_resumes_where_it_stopped(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        from ecomvlm.data_modules.partitions import Fate, StageRun
        def slow(records, settings):
            for r in records:
                time.sleep(0.05)
                print("did", r["id"], flush=True)
                yield Fate.written(r["id"], r["id"] * 2)
        recs = [{{"id": f"r{{i:02d}}"}} for i in range(40)]
        print(StageRun("slow", {str(tmp_path)!r}, slow, partition_size=40).run(recs)["fates"], flush=True)
    """))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    done_first = 0
    for line in proc.stdout:
        done_first += line.startswith("did")
        if done_first == 15:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    partial = tmp_path / "slow" / "part-000000.partial.jsonl"
    kept = len(partial.read_text().splitlines())
    assert 14 <= kept <= 16
    again = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    redone = sum(line.startswith("did") for line in again.stdout.splitlines())
    assert redone == 40 - kept and "{'written': 40}" in again.stdout
    assert not partial.exists()


def test_async_client_retries_server_errors_and_bounds_concurrency(function_endpoint, monkeypatch):
    url, ep = function_endpoint
    calls = {}

    def respond(body):
        who = body["messages"][-1]["content"]
        calls[who] = calls.get(who, 0) + 1
        if who.startswith("flaky") and calls[who] < 3:
            return 503, "overloaded"
        if who == "bad":
            return 400, "bad request"
        return 200, f"ok {who}", 0.05

    ep.respond = respond
    monkeypatch.setenv("MY_KEY", "sk-secret-value")

    async def main():
        async with AsyncChatClient(url, "m", api_key_env="MY_KEY", concurrency=4, backoff_s=0.01) as c:
            assert "sk-secret" not in repr(c)
            jobs = [c.chat([{"role": "user", "content": w}]) for w in [*(f"w{i}" for i in range(20)), "flaky1",
                                                                        "bad"]]
            return c, await asyncio.gather(*jobs)

    client, results = asyncio.run(main())
    by = {r.value: r for r in results if r.value}
    assert by["ok flaky1"].attempts == 3 and results[-1].error == "http_400" and results[-1].attempts == 1
    assert ep.max_in_flight <= 4 and ep.max_in_flight >= 2
    assert client.counters["retries"] == 2 and client.counters["failed:http_400"] == 1
    assert client.counters["prompt_tokens"] == 10 * 21


def test_async_client_feeds_back_malformed_json(function_endpoint):
    url, ep = function_endpoint
    answers = iter(["not json", '{"colour": 3}', '{"colour": "red"}'])
    seen = []

    def respond(body):
        seen.append(body["messages"])
        return 200, next(answers)

    ep.respond = respond
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}

    def validate(v):
        return None if isinstance(v.get("colour"), str) else "colour must be a string"

    async def main():
        async with AsyncChatClient(url, "m", backoff_s=0.01, format_retries=2) as c:
            return await c.chat_json([{"role": "user", "content": "colour?"}], schema, validate=validate)

    res = asyncio.run(main())
    assert res.value == {"colour": "red"} and res.error is None and res.attempts == 3
    assert "colour must be a string" in seen[2][-1]["content"] and seen[2][-2]["content"] == '{"colour": 3}'


def test_async_client_names_a_timeout(function_endpoint):
    url, ep = function_endpoint
    ep.respond = lambda body: (200, "late", 1.0)

    async def main():
        async with AsyncChatClient(url, "m", timeout_s=0.2, http_retries=1, backoff_s=0.01) as c:
            return await c.chat([{"role": "user", "content": "x"}])

    t = time.perf_counter()
    res = asyncio.run(main())
    assert res.error == "timeout" and res.attempts == 2 and time.perf_counter() - t < 5
    assert json.dumps(res.__dict__)  # results are plain data (written to partition files)
