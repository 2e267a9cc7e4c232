"""Chapters 7 and 9's widgets working in a real browser: JupyterLab and headless Chromium.

A JupyterLab server on 127.0.0.1 (a free port, a token) serves a temporary copy of the two chapters
(with short training parameters) and the results chapter 7 reads; Chromium (tests/headless.py) opens
each notebook, runs all its cells through JupyterLab's own command, then changes widgets the way a
reader does (a dropdown and a multiple selection in the explorer, a slider moved with the arrow key
and a dropdown in chapter 9) and checks that the figure the widget shows changed. Every server,
kernel and browser started here is stopped, and every wait is bounded.

Needs Debian's chromium (`make browser`) and JupyterLab (the course's environment); skips without.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import headless  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CHROMIUM = headless.find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: run `make browser` (installs Debian's chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None, reason="JupyterLab is not installed (make setup)"),
]
PARAMETERS = {"07_ablations.ipynb": {"live_steps": 2},
              "09_inside_the_encoder.ipynb": {"steps": 10, "finished_runs": [], "run_name": "ch09_browser"}}
RUN_ALL_LIMIT = 300  # seconds for all cells of a chapter (about 30 s on a 2-core CPU)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 over `root`, its settings and runtime files in `home`."""

    def __init__(self, root: Path, home: Path, env: dict, limit: float = 120):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        settings = home / "settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        # every cell in the page (not only those in view), so the widgets' DOM is there to drive
        (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        env = {**env, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
               "JUPYTER_PREFER_ENV_PATH": "1"}
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
               "--MappingKernelManager.default_kernel_name=python3", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # the course machines run as root
        self.log = open(home / "lab.log", "w")
        self.process = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait(limit)
        except BaseException:
            self.close()
            raise

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with NO_PROXY.open(request, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def _wait(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {self.process.returncode}: {self.log_tail()}")
            try:
                self.api("status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer within {limit:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-2000:]

    def shutdown_kernels(self) -> None:
        for kernel in self.api("kernels") or []:
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.shutdown_kernels()
        except (urllib.error.URLError, OSError):
            pass
        finally:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)  # a clean stop: the server shuts its kernels down
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The two chapters (parameters set as papermill sets them) and notebooks/results in a fresh folder."""
    import papermill as pm

    root, home = tmp_path_factory.mktemp("lab_root"), tmp_path_factory.mktemp("lab_home")
    for name, parameters in PARAMETERS.items():
        pm.execute_notebook(NOTEBOOKS / name, root / name, parameters=parameters, prepare_only=True, kernel_name="python3")
    shutil.copytree(NOTEBOOKS / "results" / "ablations_cpu", root / "results" / "ablations_cpu")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUTLIB_RUNS": str(home / "runs")}
    server = Lab(root, home, env)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def browser():
    with headless.Chromium(CHROMIUM, timeout=60) as chromium:
        yield chromium


def wait_for(check, limit: float, what: str, browser, every: float = 0.5):
    """Call `check()` until it returns something truthy (returned), at most `limit` seconds."""
    deadline, value = time.monotonic() + limit, None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {limit:.0f} s (last: {str(value)[:300]}); page errors: {browser.exceptions[-5:]}")


def panel(name: str) -> str:
    """JavaScript: the notebook panel of `name` in JupyterLab's main area."""
    return f"[...jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === {json.dumps(name)})"


def kernel_idle(name: str) -> str:
    return f"""(async () => {{
  const p = {panel(name)};
  if (!p) return false;
  await p.context.ready; await p.sessionContext.ready;
  const kernel = p.sessionContext.session && p.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}})()"""


RUN_ALL = """(() => { window.__ran = null;
  jupyterapp.commands.execute('notebook:run-all-cells').then(ok => { window.__ran = 'finished ' + ok; },
                                                              e => { window.__ran = 'failed ' + e; });
  return true; })()"""

STATE = """(() => {
  const out = document.querySelector('.widget-output');
  return {images: out ? [...out.querySelectorAll('img')].map(i => i.src) : [],
          readouts: [...document.querySelectorAll('.widget-readout')].map(e => e.textContent),
          errors: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]')]
                    .map(e => e.textContent.slice(-400))};
})()"""


def widget(kind: str, label: str) -> str:
    """JavaScript: the rendered widget of class `kind` whose description is `label`."""
    return (f"[...document.querySelectorAll({json.dumps(kind)})]"
            f".find(b => (b.querySelector('.widget-label') || {{}}).textContent === {json.dumps(label)})")


def choose(browser, kind: str, label: str, values: list[str]) -> list[str]:
    """Select `values` in a dropdown / multiple selection as a reader does (a change event); what is selected."""
    return browser.evaluate(f"""(() => {{
  const select = {widget(kind, label)}.querySelector('select'), values = {json.dumps(values)};
  for (const option of select.options) option.selected = values.includes(option.textContent.replace(/\\u00a0/g, ' '));
  select.dispatchEvent(new Event('change', {{bubbles: true}}));
  return [...select.selectedOptions].map(o => o.textContent);
}})()""")


def settled(browser, name: str) -> dict:
    """The widgets' state once the kernel is idle and the figure stayed the same for a second."""
    def same():
        first = browser.evaluate(STATE) if browser.evaluate(kernel_idle(name)) else None
        time.sleep(1)
        return first if first and browser.evaluate(kernel_idle(name)) and browser.evaluate(STATE) == first else None
    return wait_for(same, 90, f"{name}: the kernel idle and the figure still", browser)


def after(browser, name: str, before: dict, what: str) -> dict:
    """The state once the Output widget's figures differ from `before` (the kernel redrew, the page shows it)."""
    wait_for(lambda: browser.evaluate(STATE)["images"] != before["images"], 90, f"the figure to change after {what}", browser)
    return settled(browser, name)


def open_and_run(lab: Lab, browser, name: str) -> dict:
    """Open a notebook in JupyterLab, run all its cells with its own command; the widgets' state after."""
    browser.open(f"{lab.url}/lab/tree/{name}?token={lab.token}")
    wait_for(lambda: browser.evaluate("!!(window.jupyterapp && jupyterapp.shell)"), 60, "JupyterLab's app in the page", browser)
    browser.evaluate("jupyterapp.restored.then(() => true)")
    wait_for(lambda: browser.evaluate(kernel_idle(name)), 120, f"{name} open with an idle kernel", browser, every=1)
    browser.evaluate(f"(() => {{ jupyterapp.shell.activateById({panel(name)}.id); return true; }})()")
    browser.evaluate(RUN_ALL)
    ran = wait_for(lambda: browser.evaluate("window.__ran"), RUN_ALL_LIMIT, f"all cells of {name} run", browser, every=1)
    state = settled(browser, name)
    assert ran == "finished true" and not state["errors"], f"{name}: {ran}; errors in outputs: {state['errors']}"
    assert state["images"], f"{name}: the Output widget shows no figure; page errors: {browser.exceptions[-5:]}"
    return state


def press(browser, element: str, key: str, code: int, times: int) -> None:
    """Focus an element and press a key on it `times` times with real keyboard events."""
    focused = browser.evaluate(f"(() => {{ const e = {element}; if (!e) return false; e.focus(); return document.activeElement === e; }})()")
    assert focused, f"cannot focus {element}"
    for _ in range(times):
        for kind in ("rawKeyDown", "keyUp"):
            browser.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)


def test_ablation_explorer_redraws_on_a_new_choice(lab, browser):
    name = "07_ablations.ipynb"
    start = open_and_run(lab, browser, name)
    assert len(start["images"]) == 2  # bars and curves, samples
    assert choose(browser, ".widget-dropdown", "metric", ["stripe_score"]) == ["stripe_score"]
    metric = after(browser, name, start, "choosing the metric stripe_score")
    assert metric["images"][0] != start["images"][0] and metric["images"][1] == start["images"][1]  # same variants
    assert choose(browser, ".widget-select-multiple", "variants", ["CUT", "CycleGAN"]) == ["CUT", "CycleGAN"]
    variants = after(browser, name, metric, "choosing the variants CUT and CycleGAN")
    assert all(a != b for a, b in zip(variants["images"], metric["images"]))
    assert not any(headless.is_blank(headless.image_bytes(src)) for src in variants["images"])
    lab.shutdown_kernels()


def test_slider_moves_the_query_in_chapter_9(lab, browser):
    name = "09_inside_the_encoder.ipynb"
    start = open_and_run(lab, browser, name)
    assert start["readouts"][:2] == ["32", "32"], start["readouts"]
    press(browser, widget(".widget-hslider", "query row") + ".querySelector('.noUi-handle')", "ArrowRight", 39, times=5)
    moved = after(browser, name, start, "moving the row slider")
    assert moved["readouts"][:2] == ["37", "32"], moved["readouts"]
    assert headless.image_bytes(moved["images"][0]) != headless.image_bytes(start["images"][0])
    assert choose(browser, ".widget-dropdown", "layer", ["rgb"]) == ["rgb"]
    layer = after(browser, name, moved, "choosing the layer rgb")
    assert layer["images"][0] != moved["images"][0] and not headless.is_blank(headless.image_bytes(layer["images"][0]))
    lab.shutdown_kernels()
