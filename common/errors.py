"""Domain exceptions shared by every layer.

`UserError` (and subclasses) are expected failures caused by input or state the user controls:
the CLI prints their message and exits 1 without a traceback. Messages must name the file,
column or value at fault and say what to do.
"""


class UserError(Exception):
    """An expected failure the user can fix; printed without a traceback."""


class InputError(UserError):
    """Bad input data: missing files or columns, bad ids, NaN features, empty tables..."""


class DatasetChangedError(UserError):
    """A downstream artefact (cache, checkpoint) was built from a different dataset."""


class CacheError(UserError):
    """Cache store problems: corruption, missing generation, a writer already running."""


class TrainingDivergedError(UserError):
    """A post-condition of training failed (non-finite loss)."""
