"""Using a trained run: the Python API (`Run`, `load_run`), new items, recommend-all, export.
Imports evaluation/ and the top of clcrec/, never train/ or data/."""
