"""A remote policy and reward server that misbehaves on demand, run as a real uvicorn process.

It serves any number of replicas under path prefixes: `/{replica}/v1/chat/completions` (an OpenAI-compatible
policy) and `/{replica}/classify` (a vLLM-compatible reward server). The first user message says how each replica
answers, as `replica=behaviour` words (e.g. "a=429:30 b=ok"); a replica not named answers normally:

- `ok`: a normal answer; a completion's text says which replica wrote it ("answer from b").
- `drip`: a 200 whose JSON arrives one byte every 0.1 s, for a minute.
- `huge`: a well-formed 200 of about 200 kB.
- `notjson`: a 200 that is not JSON; `shape`: a 200 of JSON in the wrong shape.
- `429`, `429:S`: a 429, with `Retry-After: S` when S is given; `429once:S`: that, then normal answers.
- any other number: that status, its body quoting `SECRET`.

`GET /calls?prompt=...` lists the calls made with that first user message: `[replica, seconds]` on this process's
clock.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

SECRET = "upstream-secret-detail"
HUGE_BYTES = 200_000

app = FastAPI()
calls: dict[str, list[tuple[str, float]]] = defaultdict(list)


def _prompt(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def _behaviour(prompt: str, replica: str) -> str:
    said = dict(word.split("=", 1) for word in prompt.split() if "=" in word)
    return said.get(replica, "ok")


async def _drip(text: str) -> AsyncIterator[bytes]:
    for char in text * 600:
        yield char.encode()
        await asyncio.sleep(0.1)


def _answer(behaviour: str, prompt: str, replica: str, ok: dict) -> Response:
    if behaviour == "drip":
        return StreamingResponse(_drip('{"choices": ['), media_type="application/json")
    if behaviour == "huge":
        return JSONResponse({**ok, "padding": "x" * HUGE_BYTES})
    if behaviour == "notjson":
        return PlainTextResponse("<html>upstream gateway page</html>")
    if behaviour == "shape":
        return JSONResponse({"object": "list", "data": "nothing"})
    code, _, retry_after = behaviour.partition(":")
    if code == "429once":
        code = "429" if [r for r, _ in calls[prompt]].count(replica) == 1 else "ok"
    if code == "ok":
        return JSONResponse(ok)
    headers = {"Retry-After": retry_after} if retry_after else {}
    error = {"message": f"{SECRET} from {replica}", "type": "upstream", "param": None, "code": int(code)}
    return JSONResponse({"error": error}, status_code=int(code), headers=headers)


@app.post("/{replica}/v1/chat/completions")
async def chat(replica: str, request: Request) -> Response:
    body = await request.json()
    prompt = _prompt(body)
    calls[prompt].append((replica, time.monotonic()))
    n = int(body.get("n") or 1)
    choices = [{"index": i, "message": {"role": "assistant", "content": f"answer from {replica}"},
                "finish_reason": "stop"} for i in range(n)]
    ok = {"id": "chatcmpl-bad", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
          "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}}
    return _answer(_behaviour(prompt, replica), prompt, replica, ok)


@app.post("/{replica}/classify")
async def classify(replica: str, request: Request) -> Response:
    body = await request.json()
    prompt = _prompt(body)
    calls[prompt].append((replica, time.monotonic()))
    ok = {"object": "list", "data": [{"index": 0, "label": "LABEL_0", "probs": [0.5], "num_classes": 1}],
          "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    return _answer(_behaviour(prompt, replica), prompt, replica, ok)


@app.get("/calls")
async def made(prompt: str) -> list[tuple[str, float]]:
    return calls[prompt]


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
