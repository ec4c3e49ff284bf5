"""Fine-tuning from a short MAE pretraining against fine-tuning from random weights, on the demo.

  python benchmarks/mae_demo_comparison.py --workdir=/tmp/mae_cmp            # about 15 minutes
  python benchmarks/mae_demo_comparison.py --workdir=/tmp/mae_cmp --finetune_steps=300,1500

The README's sequence ("Face-domain pretraining"), run on the demo's synthetic faces with the
real commands: `configs/mae_demo.py` pretrains the demo's tiny ViT on the training images of the
demo's RAF-DB (labels ignored), then `configs/demo.py` fine-tunes it with --seeds, once from
the encoder (`--config.init_from`) and once from random weights, at equal fine-tuning steps. The
table is each pair's test accuracy, mean ± sample std over the seeds (seeds.json of each run),
reported as vit_se reports it: the checkpoint selected on the held-out tenth of train, evaluated
on test. Whichever way it goes, it is what this data says, not a claim about real faces.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--finetune_steps", default="300", help="comma-separated fine-tuning lengths to compare"
    )
    p.add_argument("--pretrain_steps", type=int, default=1500)
    return p.parse_args(argv)


def _run(args, log):
    """`python -m vit_se.main args`; its output to `log`; seconds taken."""
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run(
            [sys.executable, "-m", "vit_se.main", *args],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): python -m vit_se.main {' '.join(args)}; see {log}")
    return time.time() - t0


def _seeds(run_dir):
    with open(os.path.join(run_dir, "seeds.json")) as f:
        return json.load(f)


def main(argv=None):
    args = parse_args(argv)
    w = os.path.abspath(args.workdir)
    os.makedirs(w, exist_ok=True)
    data = [f"--config.manual_dir={w}/data/manual", f"--config.data_dir={w}/data/tfds"]
    mae_dir = os.path.join(w, "mae")
    cmd = [
        "--config=configs/mae_demo.py",
        f"--workdir={mae_dir}",
        f"--config.num_train_steps={args.pretrain_steps}",
        *data,
    ]
    seconds = _run(cmd, os.path.join(w, "mae.log"))
    with open(os.path.join(mae_dir, "pretraining.json")) as f:
        info = json.load(f)
    print(
        f"pretraining: {args.pretrain_steps} steps in {seconds:.0f} s, held-out loss "
        f"{info['metrics']['val']['loss']:.4f}\n  python -m vit_se.main {' '.join(cmd)}"
    )
    rows = []
    for steps in (int(s) for s in args.finetune_steps.split(",")):
        pair = {}
        for name, start in (("from MAE", [f"--config.init_from={mae_dir}"]), ("from random", [])):
            run_dir = os.path.join(w, f"{name.replace(' ', '_').lower()}_{steps}")
            cmd = [
                "--config=configs/demo.py",
                f"--workdir={run_dir}",
                f"--config.num_train_steps={steps}",
                f"--config.eval_every={max(steps // 3, 1)}",
                f"--config.checkpoint_every={max(steps // 3, 1)}",
                f"--seeds={args.seeds}",
                *start,
                *data,
            ]
            seconds = _run(cmd, run_dir + ".log")
            pair[name] = _seeds(run_dir)
            print(
                f"  {name}, {steps} steps ({seconds:.0f} s): python -m vit_se.main {' '.join(cmd)}"
            )
        rows.append((steps, pair))
    print("\n| fine-tuning steps | start | test accuracy (%) | mean class accuracy (%) | seeds |")
    print("|---|---|---|---|---|")
    for steps, pair in rows:
        for name, s in pair.items():
            summary = s["summary"]
            acc, mca = summary["accuracy"], summary["mean_class_accuracy"]
            print(
                f"| {steps} | {name} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} | "
                f"{100 * mca['mean']:.2f} ± {100 * mca['std']:.2f} | "
                f"{', '.join(str(x) for x in summary['seeds'])} |"
            )


if __name__ == "__main__":
    main()
