"""vit_se's training configs, installed as the package `vit_se.configs`.

One file per dataset plus `common.py` (the shared defaults) and `demo.py` (built-in synthetic
data). Pass a file to a command: `python -m vit_se.main --config=configs/sfew.py ...`; a path that
does not exist where the command runs is looked up among these installed files.
"""
