"""Follows a training config from `vit_se.main` to the first train step and prints the route.

  python benchmarks/config_route.py [--config=configs/demo.py]

The route is the sequence of vit_se functions that receive the config or one of its
sub-configs (an `ml_collections.ConfigDict` argument), in the order the calls happen, from
`main()` until the jitted train step first runs. A "stop" is a run of such calls within one
module (a module's own helpers calling each other are one stop); "back up a floor" counts the
stops that sit in a higher layer of `tests/test_layering.py` than the stop before them: the route
climbed back to a caller instead of handing the fields down. The demo config trains one step in
a temporary workdir (writing its synthetic data there), so the route is the real one.

Issue 21's before/after figures came from this script; benchmarks/README.md keeps them.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _layers():
    spec = importlib.util.spec_from_file_location(
        "test_layering", os.path.join(ROOT, "tests", "test_layering.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._layer


def _module_of(filename):
    rel = os.path.relpath(filename, os.path.join(ROOT, "vit_se"))
    return rel[:-3].replace(os.sep, ".").removesuffix(".__init__")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    args = parser.parse_args()

    import ml_collections

    layer_of = _layers()
    vit_dir = os.path.join(ROOT, "vit_se") + os.sep
    stops = []
    state = {"active": False, "done": False}

    def profile(frame, event, arg):
        if event != "call" or state["done"]:
            return
        code = frame.f_code
        if not code.co_filename.startswith(vit_dir):
            return
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("vit_se", "main.py")):
            state["active"] = True
        if not state["active"]:
            return
        if code.co_name == "train_step" and code.co_filename.endswith("train_step.py"):
            state["done"] = True  # traced once, when the step is first jitted
            return
        n = code.co_argcount + code.co_kwonlyargcount
        values = [frame.f_locals.get(name) for name in code.co_varnames[:n]]
        if any(isinstance(v, ml_collections.ConfigDict) for v in values):
            stops.append((_module_of(code.co_filename), code.co_name))

    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = [
            "vit_se.main",
            f"--config={args.config}",
            f"--workdir={tmp}/work",
            "--config.num_train_steps=1",
        ]
        from vit_se import cli
        from vit_se import main as entry

        sys.argv = cli.resolve_config_paths(sys.argv)
        sys.setprofile(profile)
        try:
            entry.FLAGS(sys.argv)
            entry.main([sys.argv[0]])
        finally:
            sys.setprofile(None)

    route = []  # [(module, [functions])], consecutive calls in one module merged
    for module, function in stops:
        if route and route[-1][0] == module:
            if function not in route[-1][1]:
                route[-1][1].append(function)
        else:
            route.append((module, [function]))
    back_up = sum(
        1
        for (a, _), (b, _) in zip(route, route[1:], strict=False)
        if (layer_of(b) or 0) > (layer_of(a) or 0)
    )
    entries = collections.Counter(m for m, _ in route)
    for module, functions in route:
        print(f"  {module}: {', '.join(functions)}")
    stops = route
    print(
        f"{len(stops)} stops in {len(entries)} files, {back_up} back up a floor; entries per "
        f"file: {', '.join(f'{m} {n}' for m, n in entries.most_common())}"
    )


if __name__ == "__main__":
    main()
