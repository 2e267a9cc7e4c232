"""Widget cells in a run without a frontend (papermill, nbval, the book's build) never wait.

Output captured with ``with output:`` is answered by nbclient's stand-in for the frontend on the
kernel's shell socket, while nbclient waits on that same socket for the cell's reply; the reply can
then go unnoticed until the cell timeout (cells of 0.02 s took the whole timeout, a few in a hundred
on a loaded machine). ``cutlib.results.show_in`` sets the plots as the Output's content instead, so
nothing has to be answered. The slow tests show that mechanism, check that chapters 7 and 9 send no
such answer, and run them headless three times in a row (papermill) and once under nbval, failing on
a run that took over twice the median.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402
from ipywidgets import Output  # noqa: E402
from PIL import Image  # noqa: E402

from cutlib import results as R  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SHIPPED = NOTEBOOKS / "results" / "ablations_cpu"
CELL_TIMEOUT = 240  # a cell that waited shows as a run of about this long (far over twice the median)


def png_of(output: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))


def test_show_in_sets_the_figures_as_png_outputs_and_closes_them():
    view = Output()
    first, second = plt.subplots(figsize=(4, 2))[0], plt.subplots(figsize=(2, 2))[0]
    first.axes[0].plot([0, 1], [1, 0])
    shown = R.show_in(view, first, second)
    assert view.outputs == shown and [o["output_type"] for o in shown] == ["display_data"] * 2
    widths = [png_of(o).size[0] for o in shown]
    assert widths[0] > 1.5 * widths[1]  # each output is its own figure, in order
    assert not plt.fignum_exists(first.number) and not plt.fignum_exists(second.number)
    R.show_in(view)  # no figures: the Output is emptied
    assert view.outputs == ()


def test_show_in_and_figure_output_say_what_they_expected():
    fig = plt.figure()
    with pytest.raises(TypeError, match="ipywidgets.Output"):
        R.show_in("not a widget", fig)
    with pytest.raises(TypeError, match="matplotlib Figure"):
        R.figure_output(plt.gca())
    plt.close("all")


def test_explorer_figures_follow_the_choice():
    results = R.load_results(SHIPPED)
    assert {"G_GAN", "NCE"} <= set(R.loss_names(results)) and "step" not in R.loss_names(results)
    pngs = []
    for variants, metric in ((["CUT", "FastCUT"], "fid"), (["CUT", "FastCUT"], "stripe_score"), (["CUT", "no_id", "external"], "fid")):
        bars, samples = R.explorer_figures(results, variants, metric, "G_GAN")
        assert len(samples.axes) == len(variants)
        pngs.append(R.figure_output(bars)["data"]["image/png"])
        plt.close("all")
    assert len(set(pngs)) == 3


def test_explorer_shows_its_plots_in_its_output_and_redraws():
    box = R.ablation_explorer(SHIPPED)
    pick, right = box.children[0].children
    view = box.children[1]
    before = [o["data"]["image/png"] for o in view.outputs]
    assert len(before) == 2 and plt.get_fignums() == []  # bars+curves and samples, none left open
    pick.value = ("CUT", "external")
    after = [o["data"]["image/png"] for o in view.outputs]
    assert len(after) == 2 and after[0] != before[0] and after[1] != before[1]


# ------------------------------------------------------------------ headless runs (slow)
def _environment(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUTLIB_RUNS": str(tmp_path / "runs")}


def _run(cmd: list[str], env: dict, limit: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on passing `limit` seconds the whole group (kernel included) is killed."""
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ... ran past {limit:.0f} s:\n{out[-2000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, process.returncode, out, "")


def papermill(source: Path, target: Path, env: dict, parameters: dict | None = None,
              timeout: int = CELL_TIMEOUT) -> list[tuple[float, str]]:
    """Execute a notebook as the book does (cwd notebooks/, `timeout` s per cell); (seconds, first
    source line) of every code cell."""
    cmd = [sys.executable, "-m", "papermill", "--cwd", str(NOTEBOOKS), "-k", "python3", "--no-progress-bar",
           "--execution-timeout", str(timeout), str(source), str(target)]
    for name, value in (parameters or {}).items():
        cmd += ["-y", json.dumps({name: value})]
    done = _run(cmd, env, limit=4 * CELL_TIMEOUT)
    assert done.returncode == 0, f"{source.name} failed under papermill:\n{done.stdout[-3000:]}"
    cells = [c for c in nbformat.read(target, 4).cells if c.cell_type == "code"]
    return [(c.metadata.papermill.duration or 0.0, c.source.split("\n")[0][:60]) for c in cells]


@pytest.fixture
def client_answers(monkeypatch, tmp_path):
    """The comm messages nbclient's stand-in for a frontend sends to the kernel on the shell socket
    (recorded, still sent) while notebooks run in this process, with the kernel's environment set."""
    from nbclient.output_widget import OutputWidget

    for name, value in _environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    sent, send = [], OutputWidget.send

    def recording(self, *args, **kwargs):
        sent.append(self.comm_id)
        return send(self, *args, **kwargs)

    monkeypatch.setattr(OutputWidget, "send", recording)
    return sent


def _cells_notebook(body: str, n: int) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfrom ipywidgets import Output\n"
                                          "from cutlib.results import show_in\nview = Output()\nview")]
    nb.cells += [nbformat.v4.new_code_cell(body.format(i=i)) for i in range(n)]
    return nb


@pytest.mark.slow
def test_captured_output_is_answered_on_the_shell_socket_and_show_in_is_not(client_answers, tmp_path):
    """The root cause, shown: every output caught by `with view:` makes the headless client send a message
    on the shell socket (the one it awaits the cell's reply on); show_in's outputs make it send none."""
    import papermill as pm

    captured = "with view:\n    view.clear_output(wait=True)\n    print({i})"
    pm.execute_notebook(_cells_notebook(captured, 20), tmp_path / "captured.ipynb", kernel_name="python3",
                        progress_bar=False, execution_timeout=20)
    assert len(client_answers) >= 20
    client_answers.clear()
    shown = "fig = plt.figure(figsize=(1, 1))\nfig.text(0.5, 0.5, '{i}')\nshow_in(view, fig)"
    out = pm.execute_notebook(_cells_notebook(shown, 20), tmp_path / "shown.ipynb", kernel_name="python3",
                              progress_bar=False, execution_timeout=20)
    assert client_answers == []
    state = out.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert [o["output_type"] for m in state.values() if m["model_name"] == "OutputModel" for o in m["state"]["outputs"]] \
        == ["display_data"]  # the last figure, kept in the notebook's widget state


@pytest.mark.slow
@pytest.mark.parametrize("chapter", ["07_ablations", "09_inside_the_encoder"])
def test_chapter_widgets_need_no_answer_from_the_client(chapter, client_answers, tmp_path):
    import papermill as pm

    parameters = {"live_steps": 2} if chapter.startswith("07") else {"steps": 10, "finished_runs": [], "run_name": "ch09_answers"}
    pm.execute_notebook(NOTEBOOKS / f"{chapter}.ipynb", tmp_path / "out.ipynb", parameters=parameters, cwd=NOTEBOOKS,
                        kernel_name="python3", progress_bar=False, execution_timeout=CELL_TIMEOUT)
    assert client_answers == [], f"{chapter} captures widget output (with an Output: ...): use cutlib.results.show_in"


@pytest.mark.slow
@pytest.mark.parametrize("chapter, parameters", [
    ("07_ablations", {"live_steps": 2}),
    ("09_inside_the_encoder", {"steps": 10, "finished_runs": []}),  # the same short training every run
])
def test_chapter_runs_headless_three_times_without_waiting(chapter, parameters, tmp_path):
    env = _environment(tmp_path)
    runs = []
    for k in range(3):
        own = {"run_name": f"ch09_headless_{k}"} if chapter.startswith("09") else {}  # trains afresh each run
        cells = papermill(NOTEBOOKS / f"{chapter}.ipynb", tmp_path / f"run{k}.ipynb", env, {**parameters, **own})
        runs.append((sum(s for s, _ in cells), max(cells)))
    median = statistics.median(total for total, _ in runs)
    report = "; ".join(f"run {k}: {total:.1f} s (slowest cell {cell[0]:.1f} s: {cell[1]!r})" for k, (total, cell) in enumerate(runs))
    assert all(total <= 2 * median for total, _ in runs), f"{chapter}: a run took over twice the median {median:.1f} s: {report}"
    print(f"{chapter}: {report}")


@pytest.mark.slow
def test_chapter_9_under_nbval(tmp_path):
    """nbval (make test) runs the chapter too: once, with a short training, in a bounded time."""
    prepared = tmp_path / "09_inside_the_encoder.ipynb"
    import papermill as pm

    pm.execute_notebook(NOTEBOOKS / prepared.name, prepared, parameters={"steps": 10, "finished_runs": []},
                        prepare_only=True, kernel_name="python3")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--nbval-kernel-name", "python3", f"--nbval-cell-timeout={CELL_TIMEOUT}", str(prepared)]
    done = _run(cmd, _environment(tmp_path), limit=4 * CELL_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, f"nbval failed on chapter 9:\n{done.stdout[-3000:]}"
