"""`make tensorboard`: TensorBoard serves the artifacts root on 127.0.0.1 and shows the stages' curves.

The test writes PPO-style curves with the pipeline's own writer into an artifact directory, starts
the `tensorboard` command as the Makefile does, asks its HTTP API for the runs and tags, and opens
the page in Debian's headless chromium (as tests/test_web_ui.py does) to check the curves render.

Run as a script, it takes the README's screenshot of a finished run's PPO curves:

    .venv/bin/python tests/test_tensorboard_ui.py artifacts tests/screenshots/tensorboard_ppo_curves.png
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TENSORBOARD_CLI = Path(sys.executable).with_name("tensorboard")
CHROMIUM = Path(os.environ.get("RLHF_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tensorboard(logdir: Path, log_file: Path) -> tuple[subprocess.Popen, str]:
    """`tensorboard --logdir <logdir> --host 127.0.0.1`, as `make tensorboard` runs it; returns it and its URL."""
    port = free_port()
    process = subprocess.Popen(
        [str(TENSORBOARD_CLI), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log_file.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tensorboard exited {process.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=5):
                return process, url
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"tensorboard did not answer within {START_TIMEOUT_S} s:\n{log_file.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for_runs(url: str, expected: set[str], timeout_s: float = 60) -> list[str]:
    """The runs TensorBoard lists once it has loaded `expected` (it scans the log dir in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = get_json(f"{url}/data/runs")
        if expected <= set(runs) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def screenshot_scalars(url: str, path: Path, tag_filter: str, first_tag: str, run_filter: str = "") -> None:
    """The time-series dashboard in headless chromium, tags (and runs) filtered, once `first_tag` shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/#timeseries")
            if run_filter:
                page.get_by_role("textbox", name="Filter runs (regex)").fill(run_filter)
            search = page.get_by_role("combobox", name="Filter tags (regex)")
            search.fill(tag_filter)
            page.get_by_text(first_tag, exact=True).first.wait_for()
            search.press("Escape")  # close the tag suggestions
            close_settings = page.get_by_role("button", name="Close side pane")
            if close_settings.count():
                close_settings.first.click()  # more room for the charts
            page.wait_for_timeout(3000)  # the charts draw after their data arrives
            page.screenshot(path=str(path))
        finally:
            browser.close()


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)")
def test_tensorboard_serves_the_artifacts_root(tmp_path):
    from pipeline.training.tensorboard_log import ScalarLog

    artifacts = tmp_path / "artifacts"
    with ScalarLog(artifacts / "ppo_policy" / "20261130T000000Z-0123456789ab") as scalars:
        for step in range(1, 9):
            scalars.log({"kl": 0.1 * step, "rm_score": 0.5 + 0.05 * step, "response_length": 20.0}, step, prefix="ppo/")
    with ScalarLog(artifacts / "sft_checkpoint" / "20261130T000000Z-ba9876543210") as scalars:
        scalars.log({"loss": 2.0}, 1, prefix="train/")

    process, url = start_tensorboard(artifacts, tmp_path / "tensorboard.log")
    try:
        ppo_run = "ppo_policy/20261130T000000Z-0123456789ab/tensorboard"
        runs = wait_for_runs(url, {ppo_run, "sft_checkpoint/20261130T000000Z-ba9876543210/tensorboard"})
        assert ppo_run in runs, runs
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        assert {"ppo/kl", "ppo/rm_score", "ppo/response_length"} <= set(tags[ppo_run]), tags
        kl = get_json(f"{url}/data/plugin/scalars/scalars?run={urllib.parse.quote(ppo_run)}&tag=ppo%2Fkl")
        assert [step for _, step, _ in kl] == list(range(1, 9))
        screenshot_scalars(url, tmp_path / "tensorboard.png", "ppo/", "ppo/kl", run_filter="ppo_policy")
        assert (tmp_path / "tensorboard.png").stat().st_size > 10_000
    finally:
        stop(process)


# The PPO curves a reader looks at first, for the README's screenshot.
README_TAGS = "ppo/(rm_score|kl|response_length|entropy|value_loss|clip_fraction)$"

if __name__ == "__main__":
    logdir, out = Path(sys.argv[1]), Path(sys.argv[2])
    server, address = start_tensorboard(logdir, Path("/tmp/tensorboard_screenshot.log"))
    try:
        time.sleep(5)  # TensorBoard loads the event files in the background
        screenshot_scalars(address, out, README_TAGS, "ppo/rm_score")
    finally:
        stop(server)
    print(f"wrote {out}")
