"""Both Colab notebooks run top to bottom, in DEMO mode and with DEMO = False.

DEMO mode needs no Colab, network or real data; each notebook ends with a cell of assertions on
what it produced (a figure file, a metric above chance). With DEMO = False the notebooks get only
their documented parameters: a fake RAF-DB laid out as on Drive, an official-layout checkpoint,
and no faces to show, the way a first "Run all" goes. The notebooks share one workdir, as they
do in Colab: the second analyses the run the first trained.
"""

import os

import nbformat
import pytest
from conftest import TIMEOUT
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, *lines):
    path = os.path.join(ROOT, "colab", name)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs"), f"{name} is stored with outputs"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "DEMO = True" in params.source
    for line in lines:  # every parameter set must be one the cell documents
        assert f"\n{line.split(' = ')[0]} = " in "\n" + params.source, line
    params.source += "\n" + "\n".join(lines)
    NotebookClient(
        nb,
        timeout=TIMEOUT,  # per cell
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


def _outputs(nb):
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_notebooks_run_with_demo_off_on_files_laid_out_as_on_drive(tmp_path):
    import jax
    import numpy as np

    from vit_se import checkpoint, model_configs, models
    from vit_se.datasets.raf_db.fake_data import write_fake_raf_db

    drive = tmp_path / "drive" / "MyDrive" / "fer" / "raf_db"
    write_fake_raf_db(str(drive), num_train=70, num_test=21, layout="image_zips")
    # An official-layout plain ViT (1000-class head) of the tiny variant, as a stand-in for the
    # downloaded B/16.
    model = models.build_model(model_configs.get_config("tiny/8", use_se=False), 1000)
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 48, 48, 3), np.float32))["params"]
    ckpt = tmp_path / "ViT-tiny_8.npz"
    checkpoint.save_npz(params, str(ckpt))
    nb1 = _run(
        "finetune_vit_se.ipynb",
        "DEMO = False",
        "INSTALL = False",
        f"REPO_DIR = {ROOT!r}",
        f"DRIVE_MANUAL_DIR = {str(drive)!r}",
        f"CHECKPOINT = {str(ckpt)!r}",
        'VARIANT = "tiny/8"',
        "IMAGE_SIZE = 48",
        "NUM_TRAIN_STEPS = 20",
        f"WORKDIR = {str(tmp_path / 'work')!r}",
    )
    run_dir = tmp_path / "work" / "run"
    assert (run_dir / "export.json").exists() and (run_dir / "curves.png").exists()
    assert "FACES is empty" in _outputs(nb1)
    nb2 = _run(
        "inside_vit_se.ipynb",
        "DEMO = False",
        "INSTALL = False",
        f"REPO_DIR = {ROOT!r}",
        f"RUN_DIR = {str(run_dir)!r}",
    )
    assert "IMAGES holds no readable image" in _outputs(nb2)
