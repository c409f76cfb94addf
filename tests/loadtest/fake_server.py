"""A tiny OpenAI-compatible chat server with known delays and deterministic errors, run as a real uvicorn process.

Request k (counted from 1 since start or POST /reset) answers 429 when k % 10 == 3 and 500 when k % 10 == 7.
Non-streaming answers take DELAY seconds; streaming ones send the first token after TTFT seconds and then one token
every ITL seconds. A prompt containing "slow" sleeps SLOW seconds first. With `best_of` the answer carries our `bon`
extension (candidate_tokens = best_of × TOKENS); with `n` it returns n choices and no extension, as vLLM does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

DELAY = 0.05
TTFT = 0.03
ITL = 0.01
TOKENS = 5
SLOW = 5.0

app = FastAPI()
counter = 0


def _bon(best_of: int, seconds: float) -> dict[str, object]:
    return {"policy_version": "fake-policy", "reward_model_version": "fake-rm", "best_of": best_of,
            "rewards": [0.25], "candidate_tokens": best_of * TOKENS,
            "timings": {"queue_seconds": 0.001, "sample_seconds": 0.02, "score_seconds": 0.005,
                        "total_seconds": seconds}}


@app.get("/v1/models")
async def models() -> dict[str, object]:
    return {"object": "list", "data": [{"id": "fake", "object": "model"}]}


@app.post("/reset")
async def reset() -> dict[str, int]:
    global counter
    counter = 0
    return {"counter": counter}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> object:
    global counter
    counter += 1
    k = counter
    body = await request.json()
    if k % 10 in (3, 7):
        status = 429 if k % 10 == 3 else 500
        return JSONResponse({"error": {"message": f"fake {status}", "type": "fake", "param": None, "code": status}},
                            status_code=status)
    if "slow" in body["messages"][-1]["content"]:
        await asyncio.sleep(SLOW)
    n = int(body.get("n") or 1)
    best_of = body.get("best_of")
    created, start = int(time.time()), time.perf_counter()
    base = {"id": f"chatcmpl-{k}", "created": created, "model": body["model"]}
    usage = {"prompt_tokens": 7, "completion_tokens": n * TOKENS, "total_tokens": 7 + n * TOKENS}

    if not body.get("stream"):
        await asyncio.sleep(DELAY)
        choices = [{"index": i, "message": {"role": "assistant", "content": "tok " * TOKENS},
                    "finish_reason": "length"} for i in range(n)]
        out = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
        if best_of is not None:
            out["bon"] = _bon(int(best_of), time.perf_counter() - start)
        return out

    async def events() -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, object]], **more: object) -> str:
            payload = {**base, "object": "chat.completion.chunk", "choices": choices, **more}
            return f"data: {json.dumps(payload)}\n\n"

        await asyncio.sleep(TTFT)
        # like our server, the `bon` object rides on the first chunk: the winner is known before its first token
        more = {"bon": _bon(int(best_of), time.perf_counter() - start)} if best_of is not None else {}
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)], **more)
        for t in range(TOKENS):
            if t:
                await asyncio.sleep(ITL)
            for i in range(n):  # one chunk per choice, interleaved, as vLLM streams n > 1
                yield chunk([{"index": i, "delta": {"content": "tok "}}])
        yield chunk([{"index": i, "delta": {}, "finish_reason": "length"} for i in range(n)])
        yield chunk([], usage=usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
