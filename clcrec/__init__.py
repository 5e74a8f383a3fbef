"""CLCRec on the PyTorch side. `from clcrec import load_run` opens a trained run for serving
(clcrec/api.py); it is imported on first use, so `import clcrec.<module>` stays light.

Importing the package first sets one runtime default, before torch loads its OpenMP runtime:
idle OpenMP threads spin briefly (GOMP_SPINCOUNT=1000), then sleep. libgomp's default spins for
~300k iterations, and on a machine shared with another busy process the spinning threads burn
the time slices their descheduled peers need. Measured on 2 cores beside one other training
process (samples/s alone -> shared): ml-100k 54k -> 2.9k (19x) with the default, 60k -> 23k
(2.6x) with 1,000; paper scale 15.7k -> 4.0k (3.9x) and 16.2k -> 9.1k (1.8x). Shorter spins
share better still but cost alone: at 100, ml-100k's small steps ran 40% slower alone (each of
their many parallel regions then pays a wake-up). A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
"""

import os as _os

if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def __getattr__(name: str):
    if name in ("load_run", "Run"):
        from clcrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'clcrec' has no attribute {name!r}")
