"""`toolkit serve`: the JSON API on a real (short) training run, checkpoint reload, 409 before any checkpoint,
token rules, the CLI's refusal to bind a public host without a token, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from test_train import run_toolkit, write_recipe
from toolkit.serve.app import create_app


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A 4-step LoRA run with checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("serve")
    recipe = write_recipe(tmp, tiny_model_dir, "served", max_steps=4, checkpoint_every=2, eval_every=2)
    run_toolkit("finetune", str(recipe))
    run_dir = tmp / "served"
    assert (run_dir / "checkpoints" / "step-4" / "adapter").is_dir()
    return run_dir


@pytest.fixture(scope="module")
def client(served_run):
    return TestClient(create_app(served_run))


def test_status_metrics_draws(client, served_run):
    status = client.get("/api/status").json()
    assert status == {"run_dir": str(served_run), "step": 4, "checkpoint_step": 4, "newest_checkpoint_step": 4,
                      "model_loaded": False}
    rows = client.get("/api/metrics").json()["rows"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(isinstance(r["loss"], float) and r["lr"] >= 0 and r["source"] in ("chat", "prose") for r in rows)
    assert [r["step"] for r in client.get("/api/metrics?since=2").json()["rows"]] == [3, 4]
    draws = client.get("/api/draws").json()
    assert draws["total"] == 4 and sum(draws["draws"].values()) == 4


def test_alerts_and_dream_shapes(client, served_run):
    with (served_run / "journal.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "time": time.time(), "kind": "loss_spike", "severity": "high",
                            "data": {"message": "test spike"}}) + "\n")
        f.write(json.dumps({"step": 4, "time": time.time(), "kind": "dream_cycle", "severity": "info",
                            "data": {"temperature": 0.9, "failure_rate": 0.25, "passed": 3, "responses": 4}}) + "\n")
    events = client.get("/api/alerts").json()["events"]
    assert events and all(e["severity"] in ("warn", "high", "critical") for e in events)
    assert any(e["kind"] == "loss_spike" for e in events)
    assert [e["kind"] for e in client.get("/api/alerts?severity=critical").json()["events"]] == []
    assert client.get("/api/alerts?severity=bogus").status_code == 400
    cycles = client.get("/api/dream").json()["cycles"]
    assert cycles[-1] == {"step": 4, "temperature": 0.9, "failure_rate": 0.25, "passed": 3, "responses": 4}


def test_chat_and_reload(client, served_run):
    r = client.post("/api/chat", json={"prompt": "Use tabs for file 3.", "max_new_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["reply"], str) and body["checkpoint_step"] == 4
    assert client.get("/api/status").json()["model_loaded"] is True
    r = client.post("/api/chat", json={"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 4})
    assert r.json()["checkpoint_step"] == 4
    assert client.post("/api/chat", json={}).status_code == 422
    # a newer checkpoint appears while "training" goes on: the next chat loads it
    checkpoints = served_run / "checkpoints"
    shutil.copytree(checkpoints / "step-4", checkpoints / "step-6")
    with (served_run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 6, "loss": 1.0, "lr": 0.001, "source": "chat", "phase": "main"}) + "\n")
    assert client.get("/api/status").json()["step"] == 6
    r = client.post("/api/chat", json={"prompt": "again", "max_new_tokens": 4})
    assert r.status_code == 200 and r.json()["checkpoint_step"] == 6
    assert client.get("/api/status").json()["checkpoint_step"] == 6


def test_no_checkpoint_409(tmp_path):
    (tmp_path / "journal.jsonl").write_text(json.dumps({"step": 0, "time": 0.0, "kind": "run_start",
                                                        "severity": "info", "data": {}}) + "\n")
    c = TestClient(create_app(tmp_path))
    assert c.get("/api/status").json()["checkpoint_step"] is None
    r = c.post("/api/chat", json={"prompt": "hello"})
    assert r.status_code == 409 and "no checkpoint yet" in r.json()["detail"]
    assert c.get("/api/metrics").json() == {"rows": [], "val": []}


def test_missing_run_dir(tmp_path):
    from toolkit.errors import ToolkitError

    with pytest.raises(ToolkitError, match="run directory not found"):
        create_app(tmp_path / "nope")
    with pytest.raises(ToolkitError, match="no journal"):
        create_app(tmp_path)


def test_token(served_run):
    c = TestClient(create_app(served_run, token="s3cret"))
    assert c.get("/api/status").status_code == 401
    assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/").status_code == 401
    assert c.post("/api/chat", json={"prompt": "x"}).status_code == 401
    assert c.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    page = c.get("/?token=s3cret")
    assert page.status_code == 200 and 'id="loss-chart"' in page.text


def test_cli_public_host_needs_token(served_run, tmp_path):
    env_token = os.environ.pop("TOOLKIT_SERVE_TOKEN", None)
    try:
        out = run_toolkit("serve", str(served_run), "--host", "0.0.0.0", check=False)
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1 and "token" in out.stderr
        out = run_toolkit("serve", str(tmp_path / "missing"), check=False)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    finally:
        if env_token is not None:
            os.environ["TOOLKIT_SERVE_TOKEN"] = env_token


# ---------------------------------------------------------------- the page in a real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_in_headless_chromium(served_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("chromium or chromedriver not on PATH (.ci/run installs Debian's chromium and chromium-driver)")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served_run, token="tok", poll_seconds=0.5), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = chromium
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.get(f"http://127.0.0.1:{port}/?token=tok")
        WebDriverWait(driver, 30).until(
            lambda d: int(d.find_element(By.ID, "loss-chart").get_attribute("data-points") or 0) > 0)
        driver.find_element(By.ID, "prompt").send_keys("Use tabs for file 2.")
        driver.find_element(By.ID, "send").click()
        reply = WebDriverWait(driver, 60).until(
            lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, "#transcript .reply") if e.text.strip()), None))
        assert reply.text.strip()
        assert not driver.find_elements(By.CSS_SELECTOR, "#transcript .error")
        assert int(driver.find_element(By.ID, "loss-chart").get_attribute("data-points")) > 0
        assert driver.find_elements(By.CSS_SELECTOR, "#draws td.num")
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        if os.environ.get("TOOLKIT_SCREENSHOT_DIR"):
            target = Path(os.environ["TOOLKIT_SCREENSHOT_DIR"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target / "serve.png")
            print(f"screenshot copied to {target / 'serve.png'}")
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
