"""The Dagster web UI driven the way a user drives it: a real browser against `dagster dev`.

Debian's chromium (never a browser downloaded by Playwright) runs headless against `dagster dev`
(webserver + daemon) on a free loopback port, with DAGSTER_HOME and the artifacts root in tmp
dirs. The test opens the asset graph and each asset's Checks tab, materializes base_model and
base_probe from the Launchpad with the tiny profile pasted into its YAML editor, waits for the
run, and reads base_probe's metadata on its asset page. Screenshots go to the test-artifacts
directory ($RLHF_TEST_ARTIFACTS, default test-artifacts/, gitignored);
`RLHF_UPDATE_README_SCREENSHOT=1` also refreshes the one the README shows.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_PROFILE = REPO_ROOT / "pipeline" / "profiles" / "tiny.yaml"
PROJECT_INSTANCE_CONFIG = REPO_ROOT / ".dagster" / "dagster.yaml"
CHROMIUM = Path(os.environ.get("RLHF_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TEST_ARTIFACTS = Path(os.environ.get("RLHF_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
README_SCREENSHOT = REPO_ROOT / "tests" / "screenshots" / "base_probe_asset_page.png"
MATERIALIZED = ("base_model", "base_probe")  # the cheapest stage with its upstream
UI_START_TIMEOUT_S = 300  # the code location imports torch and transformers; CPUs are shared
RUN_TIMEOUT_S = 900
PAGE_TIMEOUT_MS = 90_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"),
]

LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(base_url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base_url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def log_tail(log_file: Path, n_chars: int = 3000) -> str:
    return log_file.read_text(errors="replace")[-n_chars:] if log_file.exists() else "(no log)"


def wait_for_code_location(base_url: str, process: subprocess.Popen, log_file: Path) -> None:
    """Until the webserver answers and `pipeline.definitions` is loaded; a load error fails at once."""
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited with {process.returncode}:\n{log_tail(log_file)}")
        try:
            workspace = graphql(base_url, LOCATIONS_QUERY)["data"]["workspaceOrError"]
        except OSError:
            time.sleep(1)
            continue
        entries = workspace.get("locationEntries") or []
        loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
        for entry in loaded:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                pytest.fail(f"code location {entry['name']} failed to load:\n{error['message']}")
        if entries and len(loaded) == len(entries):
            return
        time.sleep(1)
    pytest.fail(f"the web UI did not load the code location within {UI_START_TIMEOUT_S}s:\n{log_tail(log_file)}")


def stop_dagster_dev(process: subprocess.Popen) -> None:
    """Ctrl+C, as a user stops it (dagster dev then shuts down webserver, daemon and code server)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left of the process group this test started (a stuck run worker, say).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _interruptible() -> None:
    # A shell that starts pytest in the background leaves SIGINT ignored, and children inherit
    # that; dagster dev shuts down cleanly only on SIGINT/SIGTERM, which needs the default handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    """`dagster dev` on a free loopback port: (base URL, DAGSTER_HOME, artifacts root)."""
    tmp = tmp_path_factory.mktemp("web_ui")
    home, artifacts_root = tmp / "dagster_home", tmp / "artifacts"
    home.mkdir()
    # The project's instance settings (telemetry off, the `gpu` pool limit), minus the first-visit
    # newsletter dialog, which would pop up over whatever the test is clicking.
    instance_config = yaml.safe_load(PROJECT_INSTANCE_CONFIG.read_text()) or {}
    instance_config["nux"] = {"enabled": False}
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    TEST_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_file = TEST_ARTIFACTS / "web_ui_dagster_dev.log"
    port = free_loopback_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RLHF_ARTIFACTS_ROOT": str(artifacts_root),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    dagster = Path(sys.executable).with_name("dagster")
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            [str(dagster), "dev", "-m", "pipeline.definitions", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_interruptible,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_code_location(base_url, process, log_file)
        yield base_url, home, artifacts_root
    finally:
        stop_dagster_dev(process)


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1600, "height": 1200},
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            yield page
        finally:
            context.close()


def screenshot(page, name: str) -> Path:
    path = TEST_ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def expected_assets_and_checks() -> dict[str, list[str]]:
    """Asset name -> its check names, from the code location itself (others add assets and gates)."""
    from pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    expected: dict[str, list[str]] = {key.to_user_string(): [] for key in graph.materializable_asset_keys}
    for check_key in graph.asset_check_keys:
        expected[check_key.asset_key.to_user_string()].append(check_key.name)
    return {name: sorted(checks) for name, checks in sorted(expected.items())}


def test_asset_graph_lists_every_asset_and_its_checks(dagster_ui, browser_page):
    base_url, _, _ = dagster_ui
    page = browser_page
    expected = expected_assets_and_checks()

    page.goto(f"{base_url}/asset-groups")
    page.get_by_text("Global asset lineage").wait_for()
    page.get_by_role("button", name="Materialize all").wait_for()
    page.get_by_role("button", name="settings", exact=True).click()  # the graph's settings menu
    page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()
    for name in expected:
        # Graph nodes are HTML inside SVG foreignObjects; zoomed out, a node shows just its name.
        page.locator("foreignObject").get_by_text(name, exact=True).first.wait_for()
    page.keyboard.press("Escape")  # close the settings menu before the screenshot
    screenshot(page, "web_ui_asset_graph.png")

    for name, checks in expected.items():
        if not checks:
            continue
        page.goto(f"{base_url}/assets/{name}?view=checks")
        page.get_by_text(f"Checks ({len(checks)})", exact=True).wait_for()
        # The tab's count renders before its rows: wait for each row, then report any that never came.
        for check in checks:
            row = page.locator(f'[class*="MiddleTruncate"][title="{check}"]').first
            try:
                row.wait_for()
            except Exception:
                listed = page.locator('[class*="MiddleTruncate"][title]').evaluate_all("els => els.map(e => e.title)")
                pytest.fail(f"{name}: check {check!r} not listed on its Checks tab (listed: {listed})")


def test_materialize_from_launchpad_then_asset_page_shows_metadata(dagster_ui, browser_page):
    base_url, home, artifacts_root = dagster_ui
    page = browser_page

    # Catalog: tick the assets, shift+click "Materialize selected" to open the Launchpad.
    page.goto(f"{base_url}/assets")
    for name in MATERIALIZED:
        page.locator(f'label:has([data-testid="checkbox-{name}"])').click()
    page.get_by_role("button", name=re.compile(rf"Materialize selected \({len(MATERIALIZED)}\)")).click(modifiers=["Shift"])
    launchpad = page.get_by_role("dialog").filter(has_text="Launchpad")
    editor = launchpad.locator(".CodeMirror").filter(has_text="ops:")
    editor.wait_for()

    # Replace the scaffolded defaults with the tiny profile's values, as a user pastes a config.
    run_config = yaml.safe_load(editor.evaluate("el => el.CodeMirror.getValue()"))
    tiny_ops = yaml.safe_load(TINY_PROFILE.read_text())["ops"]
    assert set(MATERIALIZED) <= set(run_config["ops"]), f"Launchpad scaffolded {sorted(run_config['ops'])}"
    for name in MATERIALIZED:
        run_config["ops"][name]["config"].update(tiny_ops[name]["config"])
    # One process for the two steps instead of one per step: the run is about the UI, not the executor.
    run_config["execution"] = {"config": {"in_process": {}}}
    pasted = yaml.safe_dump(run_config, sort_keys=False)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(pasted)
    assert yaml.safe_load(editor.evaluate("el => el.CodeMirror.getValue()")) == run_config
    launchpad.get_by_text("No errors").wait_for()
    screenshot(page, "web_ui_launchpad.png")
    launchpad.get_by_role("button", name=re.compile(r"Materialize$")).click()

    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = wait_for_run(instance, run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run_id} ended {run.status.value}:\n{failure_messages(instance, run_id)}"
        materialization = instance.get_latest_materialization_event(dg.AssetKey("base_probe")).asset_materialization
        artifact_path = str(materialization.metadata["artifact_path"].value)
        n_prompts = materialization.metadata["n_prompts"].value
    assert Path(artifact_path).is_dir() and artifacts_root.resolve() in Path(artifact_path).parents
    assert run.asset_selection == {dg.AssetKey(name) for name in MATERIALIZED}
    page.reload()
    page.get_by_text("Success", exact=True).first.wait_for()
    screenshot(page, "web_ui_run.png")

    # The asset page: the artifact path and the probe's markdown table, rendered.
    page.goto(f"{base_url}/assets/base_probe")
    page.get_by_text("artifact_path", exact=True).first.wait_for()
    page.get_by_text(artifact_path, exact=True).first.wait_for()
    # The innermost table: the metadata list is itself a table around the rendered markdown.
    probe_table = page.locator("table:not(:has(table))").filter(has=page.locator("th", has_text="ended_with_eos"))
    probe_table.first.wait_for()
    headers = probe_table.first.locator("th").all_inner_texts()
    assert [h.strip() for h in headers] == ["prompt", "response", "ended_with_eos"]
    assert probe_table.first.locator("tbody tr").count() == n_prompts
    shot = screenshot(page, "web_ui_base_probe_asset_page.png")
    if os.environ.get("RLHF_UPDATE_README_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        # The viewport from the Metadata heading down: the path, the hashes and the probe table.
        page.get_by_text("Metadata", exact=True).first.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(README_SCREENSHOT))
    assert shot.stat().st_size > 0


def wait_for_run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        time.sleep(2)
    pytest.fail(f"run {run_id} launched from the UI did not finish within {RUN_TIMEOUT_S}s")


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> str:
    failures = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE})
    return "\n".join(f"{e.step_key or 'run'}: {e.message}" for e in failures) or "(no failure events)"
