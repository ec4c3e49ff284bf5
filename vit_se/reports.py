"""The result tables of k-fold, the SE ablation and the cross-database matrix, in one style.

Every report is written three ways, from one result dict: JSON (everything, for scripts),
Markdown (for papers and issues) and CSV (for spreadsheets), side by side as STEM.{json,md,csv},
each file whole or not at all.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile

import numpy as np

from vit_se import workdir


def pct(x):
    """A fraction as a percentage with two decimals, as FER papers report accuracy."""
    return f"{100 * x:.2f}"


def mean_std(values):
    """{'mean', 'std'} with the sample standard deviation (n - 1); std 0 for one value."""
    values = np.asarray(values, np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
    }


def markdown_table(headers, rows, align=None):
    """Lines of a Markdown table; `align` holds one '---' / '---:' per column."""
    align = align or ["---"] * len(headers)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def csv_text(headers, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows(rows)
    return buf.getvalue()


def csv_records(keys, records):
    """CSV of dicts, one column per key; None becomes an empty cell."""
    return csv_text(keys, [["" if r[k] is None else r[k] for k in keys] for r in records])


def write_report(folder, stem, result, markdown, csv):
    """folder/stem.json, .md and .csv; returns their paths."""
    workdir.makedirs(folder)
    paths = [os.path.join(folder, f"{stem}.{ext}") for ext in ("json", "md", "csv")]
    workdir.write_json(paths[0], result)
    workdir.write_text(paths[1], markdown)
    workdir.write_text(paths[2], csv)
    return paths


def count_params(npz_path):
    """The number of parameters in an exported .npz, from the array headers alone."""
    total = 0
    with workdir.open_binary(npz_path) as f, zipfile.ZipFile(f) as z:
        for name in z.namelist():
            with z.open(name) as member:
                major, _ = np.lib.format.read_magic(member)
                read = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read(member)
                total += int(np.prod(shape, dtype=np.int64))
    return total


def model_label(model):
    """'ViT-B/16 + SE (r=4)' from a model config dict."""
    se = f" + SE (r={model['se_reduction']})" if model["use_se"] else ""
    return f"ViT-{model['name']}{se}"
