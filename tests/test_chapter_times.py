"""tools/chapter_times.py, the measurement behind the chapter table's CPU times: each notebook in its own
papermill process with empty data and runs folders and the thread count asked for; a failure is reported."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("chapter_times", REPO / "tools" / "chapter_times.py")
ct = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ct)


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_chapters_are_the_numbered_notebooks_in_order_then_the_runner():
    names = [p.name for p in ct.chapters()]
    assert names[0] == "00_data.ipynb" and names[-1] == "run_experiment.ipynb"
    numbered = names[:-1]
    assert numbered == sorted(numbered) and len(numbered) == len(list((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    assert ct.minutes(178.4) == "2 min 58 s" and ct.minutes(34.2) == "34 s"


def test_each_notebook_gets_fresh_folders_and_the_threads_and_a_failure_is_reported(tmp_path):
    # the first notebook checks what it was given: empty folders of its own and one thread; its second cell is the slow one
    good = notebook(tmp_path / "good.ipynb", "x = 1",
                    "import os, time\nfrom pathlib import Path\n"
                    "for name in ('CUTLIB_DATA', 'CUTLIB_RUNS'):\n"
                    "    p = Path(os.environ[name]); assert not p.exists() or not any(p.iterdir()), p\n"
                    "    p.mkdir(parents=True, exist_ok=True); (p / 'made').write_text('by good')\n"
                    "assert os.environ['OMP_NUM_THREADS'] == '1'\n"
                    "assert os.environ['CUTLIB_PHOTOS'] == os.environ['EXPECTED_PHOTOS']\ntime.sleep(1.5)",
                    "y = 2")
    again = tmp_path / "again.ipynb"  # a copy under another name: it must not see the first one's folders
    again.write_text(good.read_text())
    bad = notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('the notebook broke here')")
    out = tmp_path / "times.json"
    keep = tmp_path / "kept"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "chapter_times.py"), str(good), str(again), str(bad),
                           "--threads", "1", "--json", str(out), "--keep", str(keep)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUTLIB_PHOTOS": str(tmp_path / "photos"), "EXPECTED_PHOTOS": str(tmp_path / "photos")})
    assert done.returncode == 1, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    rows = {r["notebook"]: r for r in figures["notebooks"]}
    assert rows["good.ipynb"]["ok"] and rows["again.ipynb"]["ok"], done.stdout + done.stderr
    assert rows["good.ipynb"]["slowest_cell"] == 1 and rows["good.ipynb"]["slowest_cell_seconds"] >= 1.5
    assert rows["good.ipynb"]["seconds"] >= rows["good.ipynb"]["slowest_cell_seconds"]
    assert not rows["bad.ipynb"]["ok"] and "the notebook broke here" in rows["bad.ipynb"]["error"]
    assert "FAILED" in done.stdout and "the notebook broke here" in done.stdout
    assert (keep / "good" / "data" / "made").is_file() and (keep / "again" / "runs" / "made").is_file()
    assert figures["machine"]["photos"] == str(tmp_path / "photos")
    assert figures["machine"]["threads"] == 1 and figures["machine"]["cpu_count"] >= 1
    assert abs(figures["total_seconds"] - sum(r["seconds"] for r in rows.values())) < 0.5


def test_a_missing_notebook_or_a_used_keep_folder_is_refused_before_anything_runs(tmp_path):
    tool = [sys.executable, str(REPO / "tools" / "chapter_times.py")]
    done = subprocess.run([*tool, str(tmp_path / "nope.ipynb")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "nope.ipynb: no such notebook" in done.stderr
    nb = notebook(tmp_path / "a.ipynb", "x = 1")
    done = subprocess.run([*tool, str(nb), "--keep", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "already exists" in done.stderr
