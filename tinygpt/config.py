"""Configuration: a dataclass of settings in which each field is also a command-line flag.

    @dataclass
    class TrainConfig:
        max_iters: int = option(2000, "optimizer steps in total")
        decay_lr: bool = option(True, "use the warmup + cosine schedule")

    cfg = parse_config(TrainConfig, ["--max-iters", "500", "--no-decay-lr"])

The field `max_iters` becomes `--max-iters`, a bool field becomes `--decay-lr/--no-decay-lr`,
and the help text is the field's own. The dataclass's `__post_init__` checks the values; a
ValueError there is reported as a usage error (exit 2), like a bad flag.

What it leaves out: config files and `exec`-based overrides (nanoGPT's configurator.py).
"""
import argparse
import dataclasses
import math
import numbers

import numpy as np


def option(default, help, type=None, choices=None):
    """A dataclass field with the flag's help text. `type` is needed only when the default is
    None (otherwise the default's type is used)."""
    return dataclasses.field(default=default, metadata={"help": help, "type": type, "choices": choices})


def check_range(cfg, names, low, high=math.inf, owner=None):
    """For a config's `__post_init__`: each field in `names` must be a number in [low, high), else a
    ValueError naming its flag (or `owner.name`, for a class that is not a set of flags).
    subtle: `not low <= x < high` is also true for NaN (and inf fails `x < inf`), so a NaN
    setting can never train on silently into NaN weights.

    Example:
        check_range(cfg, ("beta1", "beta2"), 0, 1)   # ValueError: --beta2 must be in [0, 1), got 1.0
        check_range(opt, ("lr",), 0, owner="AdamW")  # ValueError: AdamW lr must be a finite number >= 0, got nan
    """
    for name in names:
        label = f"{owner} {name}" if owner else "--" + name.replace("_", "-")
        value = getattr(cfg, name)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{label} must be a number, got {value!r}")
        if not low <= value < high:
            limit = (f"in [{low}, {high})" if high < math.inf else
                     f">= {low}" if isinstance(value, (int, np.integer)) else f"a finite number >= {low}")
            raise ValueError(f"{label} must be {limit}, got {value}")


def build_parser(config_cls, prog=None, description=None):
    """An argparse parser with one flag per field of `config_cls`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in dataclasses.fields(config_cls):
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=meta["help"] + " (default: %(default)s)")
        else:
            parser.add_argument(flag, type=meta["type"] or type(f.default), default=f.default,
                                choices=meta["choices"], help=meta["help"] + " (default: %(default)s)")
    return parser


def parse_config(config_cls, argv=None, prog=None, description=None):
    """`config_cls` built from the command line `argv` (default: sys.argv[1:]).

    Example:
        parse_config(TrainConfig, ["--max-iters", "50"]) -> TrainConfig(max_iters=50, ...)
    """
    parser = build_parser(config_cls, prog, description)
    args = parser.parse_args(argv)
    try:
        return config_cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))
