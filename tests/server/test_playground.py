"""The playground page at `/`, driven in Debian's chromium by Playwright and checked against the API's own answers.

The browser is the system's (`/usr/bin/chromium`, which `make test` installs). Without it these tests skip, or fail
when BON_REQUIRE_BROWSER is set, as `make test` sets it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from common.servers import Server
from tests.builders import API_KEY, launch_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request, Response

CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "What can I do with my teddy bear today?"


def _missing_browser() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; `make test` installs it)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = _missing_browser()
    if missing is not None:
        if os.environ.get("BON_REQUIRE_BROWSER"):
            pytest.fail(f"BON_REQUIRE_BROWSER is set but {missing}", pytrace=False)
        pytest.skip(f"needs a browser: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def keyed(tiny_checkpoints: Path, log_dir: Path) -> Iterator[Server]:
    """A server with an API key and the gold judge as guard, so that the page shows every part of an answer."""
    server = launch_server(tiny_checkpoints, log_dir, "--api-key", API_KEY, "--guard", "judge",
                           "--default-best-of", "2", "--default-max-tokens", "16")
    try:
        yield server.wait()
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def open_with_key(page: Page, server: Server, key: str) -> None:
    """Open the playground, type the key, and wait for the policies it lists with that key."""
    page.goto(server.url + "/")
    page.get_by_test_id("api-key").fill(key)
    page.get_by_test_id("api-key").press("Tab")  # the key is read when the field changes
    page.wait_for_selector('[data-testid="policy"] option[value="sft"]', state="attached")


def ask(page: Page, best_of: int, seed: int, max_tokens: int) -> Response:
    """Fill the form, submit, and return the API's response once the page has shown it."""
    page.get_by_test_id("policy").select_option("sft")
    page.get_by_test_id("prompt").fill(PROMPT)
    page.get_by_test_id("best-of").fill(str(best_of))
    page.get_by_test_id("selection").select_option("argmax")
    page.get_by_test_id("seed").fill(str(seed))
    page.get_by_test_id("max-tokens").fill(str(max_tokens))
    with page.expect_response("**/v1/chat/completions") as answer:
        page.get_by_test_id("submit").click()
    page.wait_for_selector('[data-testid="playground"][data-state="done"]')
    return answer.value


def shown(page: Page, testid: str) -> str:
    return page.get_by_test_id(testid).text_content() or ""


def test_the_page_is_served_without_a_key_and_the_api_docs_stay(keyed: Server):
    page = httpx.get(keyed.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(keyed.url + "/docs").status_code == 200
    assert "/" not in httpx.get(keyed.url + "/openapi.json").json()["paths"]
    assert httpx.get(keyed.url + "/v1/models").status_code == 401


def test_the_page_shows_every_candidate_ranked_as_the_api_answers(page: Page, keyed: Server):
    open_with_key(page, keyed, API_KEY)
    answer = ask(page, best_of=4, seed=2024, max_tokens=12)
    body = {"model": "sft", "messages": [{"role": "user", "content": PROMPT}], "best_of": 4, "selection": "argmax",
            "return_candidates": True, "seed": 2024, "max_tokens": 12}
    assert answer.request.post_data_json == body
    assert answer.request.headers["authorization"] == f"Bearer {API_KEY}"
    api = httpx.post(keyed.url + "/v1/chat/completions", json=body, timeout=60,
                     headers={"Authorization": f"Bearer {API_KEY}"}).json()["bon"]

    items = page.get_by_test_id("candidate").all()
    indices = [int(item.get_attribute("data-index") or "") for item in items]
    by_index = {c["index"]: c for c in api["candidates"]}
    assert indices == sorted(by_index, key=lambda i: (-by_index[i]["reward"], i))  # ranked by reward
    for rank, (item, index) in enumerate(zip(items, indices, strict=True), start=1):
        candidate = by_index[index]
        assert item.get_by_test_id("candidate-text").text_content() == candidate["text"]
        assert float(item.get_by_test_id("candidate-reward").text_content() or "") == pytest.approx(
            candidate["reward"], abs=5e-4)
        assert item.get_attribute("data-rank") == str(rank)
        assert item.get_by_test_id("chosen-badge").is_visible() == (index in api["candidate_indices"])
    assert [i for i, item in zip(indices, items, strict=True) if item.get_attribute("data-chosen") == "true"] \
        == api["candidate_indices"]
    assert shown(page, "answer") == by_index[api["candidate_indices"][0]]["text"]

    # Each bar ends where its reward lies on one scale, so the ends fall in the ranking's order.
    ends = []
    for item, index in zip(items, indices, strict=True):
        fill = item.locator(".fill").bounding_box()
        assert fill is not None
        ends.append(fill["x"] + fill["width"] if by_index[index]["reward"] >= 0 else fill["x"])
    assert ends == sorted(ends, reverse=True) and ends[0] > ends[-1]

    assert float(shown(page, "chosen-reward")) == pytest.approx(api["rewards"][0], abs=5e-4)
    assert float(shown(page, "reward-mean")) == pytest.approx(api["reward_mean"], abs=5e-4)
    assert float(shown(page, "guard-reward")) == pytest.approx(api["guard_reward"], abs=5e-4)
    assert shown(page, "seed-used") == "2024"
    assert shown(page, "policy-version") == api["policy_version"]
    assert shown(page, "rm-version") == api["reward_model_version"]
    timings = answer.json()["bon"]["timings"]  # the page's own answer: timings differ from request to request
    for testid, key in (("timing-sample", "sample_seconds"), ("timing-score", "score_seconds"),
                        ("timing-total", "total_seconds")):
        assert shown(page, testid).endswith(" s")
        assert float(shown(page, testid).removesuffix(" s")) == pytest.approx(timings[key], abs=5e-4)


def test_the_page_loads_nothing_from_outside_the_server(page: Page, keyed: Server):
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))  # a bound builtin cannot be a handler
    open_with_key(page, keyed, API_KEY)
    seed = 2**64 - 1  # past what a JS number holds exactly: the page keeps the digits both ways
    answer = ask(page, best_of=2, seed=seed, max_tokens=4)
    assert answer.request.post_data_json["seed"] == seed and shown(page, "seed-used") == str(seed)
    urls = [r.url for r in requests]
    assert all(url.startswith(keyed.url + "/") for url in urls), urls
    assert {keyed.url + "/", keyed.url + "/v1/models", keyed.url + "/v1/chat/completions"} <= set(urls)


def test_a_wrong_key_shows_the_servers_401_message(page: Page, keyed: Server):
    message = httpx.get(keyed.url + "/v1/models").json()["error"]["message"]
    page.goto(keyed.url + "/")  # no key yet: listing the policies is refused
    page.wait_for_selector('[data-testid="error"]:not([hidden])')
    assert shown(page, "error-message") == message and shown(page, "error-status") == "Error 401"

    open_with_key(page, keyed, API_KEY)
    assert page.get_by_test_id("error").is_hidden()
    page.get_by_test_id("api-key").fill("sk-wrong")
    page.get_by_test_id("prompt").fill(PROMPT)
    with page.expect_response("**/v1/chat/completions") as answer:
        page.get_by_test_id("submit").click()
    assert answer.value.status == 401
    page.wait_for_selector('[data-testid="playground"][data-state="error"]')
    assert shown(page, "error-message") == message and shown(page, "error-status") == "Error 401"
    assert page.get_by_test_id("result").is_hidden()
