"""Both Colab notebooks run top to bottom in DEMO mode (no Colab, network or real data).

Each notebook ends with a cell of assertions on what it produced (a figure file, a metric above
chance); a failing cell fails the test. The notebooks share one workdir, as they do in Colab:
the second analyses the run the first trained.
"""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, workdir_line):
    path = os.path.join(ROOT, "colab", name)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs"), f"{name} is stored with outputs"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "DEMO = True" in params.source
    params.source += "\n" + workdir_line
    NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(path)}},
    ).execute()
    return nb


@pytest.mark.slow
def test_notebooks_run_on_the_demo_setting(tmp_path):
    nb1 = _run("finetune_vit_se.ipynb", f"WORKDIR = {str(tmp_path)!r}")
    assert "demo checks passed" in "".join(
        o.get("text", "") for c in nb1.cells for o in c.get("outputs", [])
    )
    run_dir = os.path.join(tmp_path, "run")
    assert os.path.exists(os.path.join(run_dir, "best_params.npz"))
    nb2 = _run("inside_vit_se.ipynb", f"RUN_DIR = {run_dir!r}")
    assert "demo checks passed" in "".join(
        o.get("text", "") for c in nb2.cells for o in c.get("outputs", [])
    )
    assert os.path.exists(os.path.join(tmp_path, "analysis", "summary.json"))
