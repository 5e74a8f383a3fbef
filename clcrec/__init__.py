"""CLCRec on the PyTorch side. `from clcrec import load_run` opens a trained run for serving
(clcrec/serving/run.py); it is imported on first use, so `import clcrec.<module>` stays light.

    clcrec/   config.py  model.py  losses.py  device.py  rundir.py     the model and what every part shares
              data/        cached chunks -> batches (host or device assembly), hybrid draws
              train/       execution plan, step, trainer loop, selection, generations, flow, plots
              evaluation/  exact ranking metrics, top-k, baselines, the report
              serving/     the Python API (Run), new items, recommend-all, export
              bench/       `cli.py bench train|recommend` and the reference-style loop

Importing the package first sets one runtime default, before torch loads its OpenMP runtime:
idle OpenMP threads spin briefly (GOMP_SPINCOUNT=1000), then sleep, so a machine shared with
another busy process is not starved by spinning threads (README, "Sharing the CPU"). A user's
OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
"""

import os as _os

if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def __getattr__(name: str):
    if name in ("load_run", "Run"):
        from clcrec.serving import run as api  # the package's one public facade, lazily

        return getattr(api, name)
    raise AttributeError(f"module 'clcrec' has no attribute {name!r}")
