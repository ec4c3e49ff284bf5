"""Export parity: max |logit difference| to JAX of each export format, for B/16 at 224.

  python benchmarks/export_parity.py [--formats=saved_model,onnx,safetensors] [--tflite]

Random ViT-SE B/16 parameters (7 classes, SE r = 4) with a random head (logits of several units,
as a trained head gives, not the zero head of an initialisation) go through the real export path,
`vit_se.export.export`, which reloads every written file and compares it with JAX (CPU, float32,
'highest' matmul precision) on uniform inputs at batch sizes 4 and 1; this prints those figures
and their tolerances (the scale rule, `vit_se.export.tolerance`) from the export report.
safetensors is mapped back onto the flax tree (bit for bit) and run by timm when torch and timm
import (the `peer` extra; `--timm` imports timm through benchmarks/timm_peer.py first, which
stands in for a torchvision that does not load beside the CPU torch build).
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
    names = {
        "saved_model": "SavedModel (TensorFlow)",
        "tflite": "TFLite (batch 1)",
        "onnx": "ONNX (onnxruntime CPU)",
        "safetensors": "safetensors (timm)",
    }
    print(f"{'format':<34} {'max |logit diff| vs JAX':<24} tolerance")
    for key, name in names.items():
        if key in report:
            diff = report[key]["max_abs_logit_diff"]
            shown = "timm not installed" if diff is None else f"{diff:.3g}"
            print(f"{name:<34} {shown:<24} {report[key]['tolerance']:.2g}")
    if "safetensors" in report:
        print(f"safetensors: {report['safetensors']['tensors_bit_equal']} tensors bit-equal")
    print(f"export took {report['seconds']}s")


if __name__ == "__main__":
    main()
