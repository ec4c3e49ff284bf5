"""`python -m vit_se.config_fields [--config=configs/raf_db.py[:ARG]]`: every config field, its
default, and one line of what it does.

The documentation is the comment on each field in `configs/common.py` and
`vit_se/model_configs.py` (on the assignment's line, or the comment lines right above it), read
from the source, so the listing cannot drift from the defaults; `tests/test_config_fields.py`
fails when a field has no comment. With `--config`, a column shows that config's value and marks
the fields it changes.
"""

from __future__ import annotations

import ast
import inspect
import io
import sys
import tokenize

from absl import flags

from vit_se import cli, model_configs
from vit_se.configs import common


def _comments(source):
    """{line number: comment text} of every comment in `source`."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _dotted(node):
    """'augment.crop' for the target `config.augment.crop`, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "config" and parts:
        return ".".join(reversed(parts))
    return None


def _docs_of(function, prefix=""):
    """{dotted field: doc} of the `config.FIELD = ...` assignments in `function`'s source; the
    keys of a `ConfigDict({...})` literal assigned to a field count as its fields too."""
    source = inspect.getsource(function)
    comments = _comments(source)
    lines = source.splitlines()
    docs = {}

    def doc_at(first, last):
        if last in comments and not lines[last - 1].lstrip().startswith("#"):
            return comments[last]
        above, line = [], first - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        return " ".join(above)

    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        field = _dotted(node.targets[0])
        if field is None:
            continue
        # A field assigned twice (a typed placeholder, then its value) keeps the first doc.
        docs[prefix + field] = docs.get(prefix + field) or doc_at(node.lineno, node.end_lineno)
        value = node.value
        if isinstance(value, ast.Call) and value.args and isinstance(value.args[0], ast.Dict):
            for key, item in zip(value.args[0].keys, value.args[0].values, strict=True):
                if isinstance(key, ast.Constant):
                    docs[f"{prefix}{field}.{key.value}"] = doc_at(key.lineno, item.end_lineno)
    return docs


def field_docs():
    """{dotted field: one line of doc} for every field of `configs/common.py`'s config."""
    docs = _docs_of(common.get_config)
    docs.update(_docs_of(model_configs.get_config, prefix="model."))
    return docs


def flat_fields(config):
    """{dotted field: value} of a ConfigDict's leaves (sub-configs descended into)."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items") and not isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat_fields(value).items()})
        else:
            out[key] = value
    return out


def table(config=None):
    """The listing: field, default, [the config's value,] doc; one line each."""
    defaults = flat_fields(common.get_config())
    docs = field_docs()
    given = flat_fields(config) if config is not None else None
    width = max(len(k) for k in defaults)
    rows = []
    for key, default in defaults.items():
        cells = [f"{key:<{width}}", f"{default!r:<22}"]
        if given is not None:
            value = given.get(key, default)
            mark = "*" if value != default else " "
            cells.append(f"{mark}{value!r:<22}")
        rows.append("  ".join(cells) + "  " + docs.get(key, ""))
    header = [f"{'field':<{width}}", f"{'default':<22}"]
    if given is not None:
        header.append(f" {'this config':<22}")
    lines = ["  ".join(header) + "  what it does"]
    if given is not None:
        lines.append("(* the config changes the default; set any field with --config.FIELD=VALUE)")
    return "\n".join(lines + rows)


FLAGS = flags.FLAGS


def define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "A training config whose values to show beside the defaults."
    )


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    print(table(FLAGS.config))


if __name__ == "__main__":
    define_flags()
    sys.argv = cli.resolve_config_paths(sys.argv, command="config_fields")
    cli.run(main, "config_fields", hide_accelerators=False)
