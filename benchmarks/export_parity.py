"""Export parity: max |logit difference| to JAX of each export format, for B/16 at 224.

  python benchmarks/export_parity.py [--formats=saved_model,onnx,safetensors] [--tflite]

Random ViT-SE B/16 parameters (7 classes, SE r = 4) with a random head (logits of several units,
as a trained head gives, not the zero head of an initialisation) go through the real export path,
`vit_se.export.export`, which reloads every written file and compares it with JAX (CPU, float32,
'highest' matmul precision) on uniform inputs at batch sizes 4 and 1; this prints those figures
from the export report. safetensors is checked by the NumPy forward pass in timm's layout, and
by timm itself when torch and timm import (the `peer` extra; `--timm` imports timm through
benchmarks/timm_peer.py first, which stands in for a torchvision that does not load beside the
CPU torch build).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", default="saved_model,onnx,safetensors")
    p.add_argument("--tflite", action="store_true")
    p.add_argument("--variant", default="B/16")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--timm", action="store_true", help="also check the safetensors under timm")
    args = p.parse_args(argv)
    if args.timm:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import timm_peer

        _, timm, note = timm_peer.import_timm()
        print(f"timm {timm.__version__} ({note})")

    import jax
    import numpy as np

    from vit_se import export, inference, model_configs, models, workdir
    from vit_se.datasets.labels import CLASS_NAMES

    config = model_configs.get_config(args.variant, use_se=True)
    model = models.build_model(config, len(CLASS_NAMES))
    x = np.zeros((1, args.image_size, args.image_size, 3), np.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree_util.tree_map(np.asarray, params)
    rng = np.random.default_rng(0)
    width = params["head"]["kernel"].shape[0]
    params["head"]["kernel"] = rng.normal(0, 3 / np.sqrt(width), (width, len(CLASS_NAMES)))
    params["head"]["kernel"] = params["head"]["kernel"].astype(np.float32)
    info = workdir.ExportInfo(
        model=config.to_dict(),
        class_names=list(CLASS_NAMES),
        image_size=args.image_size,
        eval_resize=args.image_size,
    )
    trained = inference.Trained(model, params, info, {"benchmark": "random parameters"})
    check = export.check_inputs(trained)
    biggest = np.abs(trained.logits(check[0])).max()
    print(f"{args.variant} at {args.image_size}: |logits| up to {biggest:.2f}")
    with tempfile.TemporaryDirectory(prefix="vit_se_export_parity_") as root:
        report = export.export(
            trained,
            os.path.join(root, "export"),
            formats=tuple(args.formats.split(",")),
            tflite=args.tflite,
        )
    rows = []
    if "saved_model" in report:
        rows.append(("SavedModel (TensorFlow)", report["saved_model"]["max_abs_logit_diff"]))
    if "tflite" in report:
        rows.append(("TFLite (batch 1)", report["tflite"]["max_abs_logit_diff"]))
    if "onnx" in report:
        rows.append(("ONNX (onnxruntime CPU)", report["onnx"]["max_abs_logit_diff"]))
    if "safetensors" in report:
        st = report["safetensors"]
        rows.append(("safetensors (NumPy, timm layout)", st["max_abs_logit_diff_numpy"]))
        if st["max_abs_logit_diff_timm"] is not None:
            rows.append(("safetensors (timm)", st["max_abs_logit_diff_timm"]))
    print(f"{'format':<34} max |logit diff| vs JAX")
    for name, value in rows:
        print(f"{name:<34} {value:.3g}")
    print(f"export took {report['seconds']}s")


if __name__ == "__main__":
    main()
