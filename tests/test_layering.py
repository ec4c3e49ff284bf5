"""Data flows one way: no vit_se module imports one above it (README.md, "Layout").

Every import statement of every module is read, including those inside functions (an import
deferred to call time is still a dependence), and checked against the layers below. A module that
is in no layer fails the test, so a new module has to be placed deliberately.
"""

import ast
import functools
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module may import modules of lower layers only (and its own package).
LAYERS = [
    # Facts, files and errors: no vit_se imports above this line.
    [
        "errors",
        "native_logs",
        "choices",
        "metrics",
        "model_configs",
        "optim",
        "sharding",
        "datasets",
        "datasets.labels",
        "progress",
        # The PyTorch loader of the safetensors export: it imports no vit_se module at all.
        "timm_vit_se",
    ],
    # Face detection and alignment: below every builder, the pipeline and inference.
    ["datasets.faces"],
    [
        "workdir",
        "configs.common",
        "datasets.common",
        "datasets.registry",
        "pretrained",
        "tpu_slices",
    ],
    # Finding, sniffing and reading images and videos: for the builders below and the commands.
    ["datasets.synthetic_faces", "media"],
    # The unlabelled sources a pretraining config names (pure Python: config checks read them).
    ["mae_sources"],
    # Dataset builders (each vit_se.datasets.<name> package) and the training configs.
    ["datasets.*", "configs"],
    # The model and its checkpoints.
    ["cpu_lean"],
    ["models"],
    ["checkpoint", "mae"],
    # Steps, data and the pieces every evaluator shares.
    ["train_step", "eval_step", "input_pipeline", "mae_checkpoint"],
    # The masked autoencoder's train and eval steps, on the classifier's state and shardings.
    ["mae_step"],
    [
        "config_checks",
        "train_setup",
        "attention",
        "figures",
        "reports",
        "preemption",
        "run_lock",
        "tracking",
        "unlabelled",
    ],
    # The trainer's programs compiled for a TPU slice (vit_se.main --compile_for).
    ["preflight"],
    # Predictions drawn onto their inputs (figures over media), and printed or written as a
    # table: below the command layer.
    ["annotate", "prediction_output"],
    ["seeds"],
    ["state_checkpoints"],
    # Masked-autoencoder pretraining's data, evaluation, figures and export, for the trainer.
    ["pretraining"],
    # The trainer; a trained model back from disk; each export format, written and read back.
    ["train", "inference", "export_tf", "export_onnx", "export_safetensors"],
    # The command layer; the aggregate over folds. Nothing below it imports cli.
    ["cli", "folds"],
    # Commands.
    ["kfold", "evaluate", "predict", "analyze", "export", "config_fields", "build_dataset"],
    # Result grids built from the commands, and the training entry point (--seeds reports runs
    # the way the grids do).
    ["experiments", "experiments.ablation", "experiments.cross_dataset", "experiments.__main__"],
    ["main"],
]
# The evaluators sit below the trainer, as in big_vision: using a model never needs training code.
INFERENCE_COMMANDS = ("evaluate", "predict", "analyze", "export", "inference", "eval_step")
TRAINING = ("train", "train_setup", "train_step", "config_checks")


def _modules():
    mods = {}
    for folder in ("vit_se", "configs"):
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(root, f), ROOT)[:-3].replace(os.sep, ".")
                rel = rel.removesuffix(".__init__")
                name = "vit_se." + rel if folder == "configs" else rel
                mods[name.removeprefix("vit_se.") or "vit_se"] = os.path.join(root, f)
    return mods


def _imports(path, module):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(["vit_se", *base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod.
            names = [
                f"{mod}.{a.name}" if _is_module(f"{mod}.{a.name}") else mod for a in node.names
            ]
        else:
            continue
        for name in names:
            if name == "vit_se" or name.startswith("vit_se."):
                found.add(name.removeprefix("vit_se.") if name != "vit_se" else "vit_se")
    return found


def _is_module(dotted):
    return dotted.removeprefix("vit_se.") in MODULES


def _layer(module):
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    if module.startswith("datasets."):
        return next(i for i, la in enumerate(LAYERS) if "datasets.*" in la)
    if module.startswith("configs."):
        return next(i for i, la in enumerate(LAYERS) if "configs" in la)
    return None


MODULES = _modules()


@functools.cache
def _edges():
    """(importer, imported) between modules, each name reduced to the module that exists.

    Cached: every per-module test reads the same walk, and parsing the package 90 times took
    most of this file's time.
    """
    edges = []
    for module, path in MODULES.items():
        for name in _imports(path, module):
            while name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in MODULES and name != module:
                edges.append((module, name))
    return tuple(edges)


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if m != "vit_se" and _layer(m) is None)
    assert not missing, f"place these modules in LAYERS: {missing}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "vit_se"))
def test_no_import_reaches_up_or_sideways(module):
    here = _layer(module)
    for importer, imported in _edges():
        if importer != module or imported == "vit_se":
            continue
        if module.startswith(imported + "."):
            continue  # a module's own package (its __init__)
        if module.startswith("datasets.") and imported.startswith("datasets."):
            same_builder = module.split(".")[1] == imported.split(".")[1]
            if same_builder or _layer(imported) < here:
                continue
        there = _layer(imported)
        assert there is not None and there < here, (
            f"{module} (layer {here}) imports {imported} (layer {there})"
        )


def test_using_a_model_never_imports_the_trainer():
    for importer, imported in _edges():
        if importer in INFERENCE_COMMANDS:
            assert imported not in TRAINING, f"{importer} imports {imported}"


def test_the_walk_sees_deferred_and_relative_imports():
    # Guards the test itself: kfold imports train; a function-level import is seen.
    assert ("kfold", "train") in _edges()
    assert ("datasets.jaffe", "datasets.jaffe.jaffe_dataset_builder") in _edges()
    assert ("cli", "inference") in _edges()  # imported inside load_model
