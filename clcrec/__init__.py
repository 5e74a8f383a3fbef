"""CLCRec on the PyTorch side. `from clcrec import load_run` opens a trained run for serving
(clcrec/api.py); it is imported on first use, so `import clcrec.<module>` stays light."""


def __getattr__(name: str):
    if name in ("load_run", "Run"):
        from clcrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'clcrec' has no attribute {name!r}")
