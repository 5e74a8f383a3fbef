"""The search space of `cli.py tune`: which TrainConfig fields vary, over what, declared in TOML.

    python cli.py tune studies/ml --dataset data/ml-100k --space my-space.toml

A space file has one table per TrainConfig field (DEFAULT_SPACE below is one; a file given with
--space replaces it whole):

    [l_r]                 # a float field: low and high, optionally log = true or step = 0.1
    low = 1e-4
    high = 1e-2
    log = true
    [dim_E]               # any field: a list of choices
    choices = [32, 64, 128]

Integer fields take low/high (and log or step) too. Fields that would stop the trials from sharing
one dataset, negative cache and study folder cannot vary (FIXED).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from clcrec.config import TrainConfig
from common.errors import UserError
from common.tomlconfig import check_value, field_types, type_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# The reference hyperparameters, each around its default (l_r 0.005, the reference's 0.001; reg_weight 0.1, temp_value 2.0,
# lr_lambda 0.5, num_sample 0.5, dim_E 64).
DEFAULT_SPACE = """
[l_r]
low = 1e-4
high = 1e-2
log = true

[reg_weight]
low = 1e-3
high = 1.0
log = true

[temp_value]
low = 0.1
high = 4.0
log = true

[lr_lambda]
low = 0.1
high = 0.9

[num_sample]
low = 0.0
high = 1.0

[dim_E]
choices = [32, 64, 128]
"""
FIXED = {"dataset": "the trials share one dataset", "cache": "the trials share one negative cache",
         "run_dir": "each trial has its own under the study folder", "num_neg": "the shared cache has one num_neg",
         "exclude": "the shared cache has one exclusion mode"}


@dataclasses.dataclass(frozen=True)
class Param:
    name: str  # a TrainConfig field
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial):
        """This parameter's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if field_types(TrainConfig)[self.name] is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def bounds(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (
            f" step {self.step:g}" if self.step else "")


def parse_space(text: str, where: str) -> list[Param]:
    """The parameters of a space file's text; UserError naming `where` and the table at fault."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"search space {where} is not valid TOML: {e}") from None
    types = field_types(TrainConfig)
    params = []
    for name, spec in raw.items():
        at = f"search space {where}: [{name}]"
        if name in FIXED:
            raise UserError(f"{at} cannot vary: {FIXED[name]}")
        if name not in types:
            raise UserError(f"{at} is not a TrainConfig field")
        if not isinstance(spec, dict):
            raise UserError(f"{at} must be a table (low = .., high = .. or choices = [..]), got {spec!r}")
        unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
        if unknown:
            raise UserError(f"{at} has unknown key {unknown[0]!r}; the keys are low, high, log, step, choices")
        kind = types[name]
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
                raise UserError(f"{at}: choices = [..] is a non-empty list and stands alone")
            typed = [check_value(kind, c) for c in choices]
            if any(t is None for t in typed) or isinstance(typed[0], tuple):
                raise UserError(f"{at}: every choice must be {type_name(kind)}, got {choices!r}")
            params.append(Param(name, choices=tuple(typed)))
            continue
        if kind not in (int, float):
            raise UserError(f"{at}: {name} is not a number; give it choices = [..]")
        lo, hi = spec.get("low"), spec.get("high")
        numbers = [v for v in (lo, hi, spec.get("step")) if v is not None]
        if lo is None or hi is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and abs(v) < 1e300 and math.isfinite(v) for v in numbers):
            raise UserError(f"{at} needs numbers low and high (and a number step, if any)")
        if kind is int and not all(float(v).is_integer() for v in numbers):
            raise UserError(f"{at}: {name} is an integer field; low, high and step must be integers")
        if not lo < hi or (spec.get("log") and lo <= 0) or (spec.get("step") is not None and spec["step"] <= 0):
            raise UserError(f"{at} needs low < high (low > 0 with log = true, step > 0)")
        if not isinstance(spec.get("log", False), bool) or (spec.get("log") and spec.get("step")):
            raise UserError(f"{at}: log is true or false, and cannot go with step")
        params.append(Param(name, low=lo, high=hi, log=spec.get("log", False), step=spec.get("step")))
    if not params:
        raise UserError(f"search space {where} declares no parameter")
    return params


def read_space(path: Path | None) -> tuple[list[Param], str]:
    """(parameters, the TOML text they came from): the file's, or DEFAULT_SPACE."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "(the default)"), DEFAULT_SPACE.lstrip()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f"search space {path} is unreadable ({e.strerror or e})") from None
    return parse_space(text, str(path)), text


def check_space(params: list[Param], base: TrainConfig) -> None:
    """Every bound and choice must make a valid TrainConfig with the base config (the config's own
    checks: l_r > 0, lr_lambda in [0, 1]...), so no trial fails on a value the space allows."""
    for p in params:
        for v in p.bounds():
            try:
                base.replace(**{p.name: v})
            except UserError as e:
                raise UserError(f"search space: {p.name} = {v!r} is not a valid config value ({e})") from None
