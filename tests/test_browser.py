"""The MLflow UI in a real browser: ``mlflow server`` on 127.0.0.1 against a synthetic store, headless Chromium
(Debian's chromium + chromium-driver, driven by selenium) opens the experiment's run list; the runs and a metric
column must be on screen. The screenshot is kept (``RECSYS_SCREENSHOT_DIR``, default: the test's tmp dir)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from servers import free_port, wait_until_up
from test_report_store import build_store

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=3000,1100"]  # wide: the grid renders only visible columns


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory):
    """One store with both tests' experiments (synthetic-compress and sweep-demo) and one ``mlflow server`` over it:
    a server start is the costly part of these tests, and each test reads only its own experiment."""
    root = tmp_path_factory.mktemp("ui-store")
    stores = {"runs": build_store(root), "sweep": build_sweep_store(root)}
    assert stores["runs"][0] == stores["sweep"][0]   # the same sqlite store
    gen = _serve(root, stores["runs"][0])
    url = next(gen)
    client = MlflowClient(stores["runs"][0])
    yield {k: (url, client.get_experiment_by_name(exp).experiment_id, logged) for k, (_, exp, logged) in stores.items()}
    gen.close()


@pytest.fixture
def mlflow_server(ui_store):
    return ui_store["runs"]


def _serve(tmp_path, uri):
    """``mlflow server`` on 127.0.0.1 over the store ``uri``; yields its url."""
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/health", proc, tmp_path / "server.log", "mlflow server")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def headless_chrome(webdriver, service_cls, tmp_path: Path):
    """Headless Chromium with its own profile under ``tmp_path``, and the folder screenshots go to."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(options=opts, service=service_cls(executable_path=DRIVER))
    shots = Path(os.environ.get("RECSYS_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    return driver, shots


def test_mlflow_ui_shows_runs_and_metric_column(mlflow_server, tmp_path):
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium / chromedriver not installed: run scripts/install_browser.sh "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, exp_id, logged = mlflow_server
    driver, shots = headless_chrome(webdriver, Service, tmp_path)
    try:
        driver.get(f"{url}/#/experiments/{exp_id}/runs")
        body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait = WebDriverWait(driver, 60, poll_frequency=0.5)
        try:
            wait.until(lambda d: "matching runs" in body() and "neumf-ml-100k" in body())
            # MLflow 3 shows no metric column by default: add final/hr_at_10 through the "Columns" picker
            driver.find_element(By.XPATH, "//button[contains(., 'Columns')]").click()
            wait.until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space(text())='final/hr_at_10']"))
            driver.find_element(By.XPATH, "//*[normalize-space(text())='final/hr_at_10']").click()
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            value = next(f"{m['final/hr_at_10']:.6f}"[:6] for m in logged.values())
            wait.until(lambda d: "final/hr_at_10" in body() and value in body())
        finally:
            driver.save_screenshot(str(shots / "mlflow_runs.png"))
        text = body()
        assert "synthetic-compress" in text and f"{len(logged) + 2} matching runs" in text
        names = {line for line in text.splitlines() if line.startswith("neumf-ml-100k ")}
        assert len(names) == len(logged)  # every pipeline run is listed
        header = driver.find_elements(By.XPATH, "//*[@role='columnheader'][contains(., 'final/hr_at_10')]")
        assert header, "no final/hr_at_10 column header in the run table"
        shown = [f"{m['final/hr_at_10']:.6f}"[:6] for m in logged.values()]
        assert sum(v in text for v in shown) >= len(set(shown)) - 1
        assert (shots / "mlflow_runs.png").stat().st_size > 20_000
    finally:
        driver.quit()


def ui_link(url: str, exp_id: str) -> str:
    from recsys.tracking import experiment_url

    return experiment_url(url, exp_id)


def build_sweep_store(root: Path) -> tuple[str, str, dict[str, dict[str, float]]]:
    """A sweep as the pipeline logs it: a study parent run and its trials nested under it (``mlflow.parentRunId``),
    named the pipeline's way (``recsys.tracking.readable_run_name``), through the real ``init_store``."""
    from mlflow.entities import Metric, Param, RunTag

    from recsys.tracking import init_store, readable_run_name

    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    exp_id = init_store(uri, "sweep-demo", artifact_location=str(root / "mlruns" / "artifacts"))
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    parent = client.create_run(exp_id, run_name="study:prune_lr", tags={"recsys.kind": "study"})
    logged = {}
    for i, (ratio, lr) in enumerate([(0.2333333, 2.9375384576328295e-05), (0.4111, 1.234567e-4), (0.6789, 3.3e-3)]):
        over = ["data=ml-100k", f"prune.ratio={ratio}", f"finetune.lr={lr}", "hparams_search=prune_lr"]
        run = client.create_run(exp_id, run_name=readable_run_name("neumf-ml-100k", over),
                                tags={"overrides": ",".join(over), "mlflow.parentRunId": parent.info.run_id})
        m = {"final/hr_at_10": 0.61 - 0.1 * ratio + 0.001 * i, "final/artifact_bytes": 1e6 * (1 - ratio)}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in m.items()],
                         params=[Param("prune.ratio", str(ratio)), Param("finetune.lr", str(lr))],
                         tags=[RunTag("optuna_trial", str(i))])
        client.set_terminated(run.info.run_id, "FINISHED")
        logged[run.info.run_name] = m
    client.set_terminated(parent.info.run_id, "FINISHED")
    return uri, "sweep-demo", logged


@pytest.fixture
def sweep_server(ui_store):
    return ui_store["sweep"]


def test_experiment_opens_on_runs_table_and_sweep_runs_compare(sweep_server, tmp_path):
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium / chromedriver not installed: run scripts/install_browser.sh")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, exp_id, logged = sweep_server
    driver, shots = headless_chrome(webdriver, Service, tmp_path)
    body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
    wait = WebDriverWait(driver, 60, poll_frequency=0.5)
    names = sorted(logged)
    try:
        # the experiment itself (no /runs in the URL) as the link the pipeline prints: MLflow 3.17's UI picks its
        # layout from the GenAI / Model training switch (URL workflowType or browser storage), not from the tag
        driver.get(ui_link(url, exp_id))
        try:
            wait.until(lambda d: "study:prune_lr" in body())
            assert "/runs" in driver.current_url, driver.current_url  # the UI routed to the runs table
            # the trials are nested under the study: expand it
            driver.find_element(By.XPATH, "//*[@role='row'][contains(., 'study:prune_lr')]//button").click()
            wait.until(lambda d: all(n in body() for n in names))
            driver.find_element(By.XPATH, "//button[contains(., 'Columns')]").click()
            for key in ("final/hr_at_10", "final/artifact_bytes"):
                wait.until(lambda d, key=key: d.find_elements(By.XPATH, f"//*[normalize-space(text())='{key}']"))
                driver.find_element(By.XPATH, f"//*[normalize-space(text())='{key}']").click()
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            wait.until(lambda d: all(f"{m['final/hr_at_10']:.4f}"[:5] in body() for m in logged.values()))
        finally:
            driver.save_screenshot(str(shots / "mlflow_sweep_runs.png"))
        assert "neumf-ml-100k prune.ratio=0.233 finetune.lr=2.94e-05" in body()
        for key in ("final/hr_at_10", "final/artifact_bytes"):
            assert driver.find_elements(By.XPATH, f"//*[@role='columnheader'][contains(., '{key}')]"), key
        # select the three trials and compare them
        for n in names:
            driver.find_element(By.XPATH, f"//*[@role='row'][contains(., '{n}')]//input[@type='checkbox']").click()
        driver.find_element(By.XPATH, "//button[contains(., 'Compare')]").click()
        wait.until(lambda d: "Comparing 3" in body() or "compare-runs" in d.current_url)
        wait.until(lambda d: "final/hr_at_10" in body())
        driver.save_screenshot(str(shots / "mlflow_sweep_compare.png"))
        assert (shots / "mlflow_sweep_runs.png").stat().st_size > 20_000
    finally:
        driver.quit()
