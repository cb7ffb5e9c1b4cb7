"""What a resumed run takes from the settings it was saved with, and what it refuses.

`train` saves its settings in `training_state.pt` ("settings"). On resume:

* the model and the scale it trains at cannot change: `preset`, `imagenet_prior`, `fine_semantic`, `patch`
  and `depth` (compared by file name, so that the MiDaS file may move) given otherwise end
  the command with one line naming each, with the run's value and the given one;
* how long and where it runs is taken as given: `steps`, `minutes`, `threads`, `device`,
  `validate_every`, `save_every` (and `out`, `init`, which a resume does not read);
* everything else is the run's recipe (learning rate and schedule, batch, seed, data, real
  pairs, losses, synthesis, validation): the saved values are kept, and those given otherwise
  are listed in the line that says the run resumes. A setting the saved run lacks (one the
  code gained since) is taken as given; a part of a nested setting it lacks (a synthesis option
  added since) takes the class's default, which is what the code did before it had the part.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from .run_folder import RunFolderError

MODEL_SETTINGS = {"preset": "the model", "imagenet_prior": "the model", "fine_semantic": "the model",
                  "depth": "the model", "patch": "the scale the weights are trained at"}
"""Settings a resume refuses to change, with what they decide."""
TAKEN_AS_GIVEN = ("out", "init", "steps", "minutes", "threads", "device", "validate_every", "save_every")

Settings = TypeVar("Settings")


def saved_form(settings: object) -> dict:
    """`settings` (a dataclass) as `training_state.pt` stores them: JSON values, paths as text."""
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))


def _from_saved(value: object, hint: object) -> object:
    """A saved JSON value back as the type `hint` names (paths, tuples, nested settings, whose
    values the saved run lacks take the class's defaults)."""
    if value is None:
        return None
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _from_saved(value, next(argument for argument in arguments if argument is not type(None)))
    if origin in (list, tuple):
        items = [_from_saved(item, arguments[0] if arguments else object) for item in value]
        return items if origin is list else tuple(items)
    if dataclasses.is_dataclass(hint):
        return _with_saved(hint(), value)
    return Path(value) if hint is Path else value


def _with_saved(settings: Settings, saved: Mapping, names: typing.Iterable[str] | None = None) -> Settings:
    """`settings` with the saved value of each of `names` (default: all) that `saved` has."""
    hints = typing.get_type_hints(type(settings))
    names = [name for name in (names if names is not None else hints) if name in saved and name in hints]
    return dataclasses.replace(settings, **{name: _from_saved(saved[name], hints[name]) for name in names})


def _shown(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "on", False: "off", None: "none"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return str(value)


def _differences(saved: object, given: object, name: str = "") -> list[tuple[str, object, object]]:
    """(dotted name, saved, given) of each value that differs; a key the saved run lacks is not one."""
    if isinstance(saved, Mapping) and isinstance(given, Mapping):
        return [difference for key in given if key in saved
                for difference in _differences(saved[key], given[key], f"{name}.{key}" if name else key)]
    return [] if saved == given else [(name, saved, given)]


def _model_setting(name: str, value: object) -> object:
    return Path(value).name if name == "depth" and value is not None else value


def resumed_settings(given: Settings, saved: Mapping | None, out: Path) -> tuple[Settings, list[str]]:
    """(the settings a run resumes with, "NAME SAVED (given GIVEN)" for each setting kept from
    `saved` though given otherwise). Raises RunFolderError naming every model setting given
    otherwise. `saved` None (a run saved without its settings) keeps `given` as it is."""
    if saved is None:
        return given, []
    now = saved_form(given)
    refused = [f"--{name.replace('_', '-')} {_shown(now[name])} differs from the run in {out}, which has "
               f"{_shown(saved[name])} ({changes} cannot change on resume)"
               for name, changes in MODEL_SETTINGS.items()
               if name in saved and _model_setting(name, saved[name]) != _model_setting(name, now[name])]
    if refused:
        raise RunFolderError("; ".join(refused) + f"; resume with the run's values, or start a new --out "
                             f"(--init {out / 'model_latest.pt'} starts from its weights)")
    recipe = [name for name in now if name not in TAKEN_AS_GIVEN and name not in MODEL_SETTINGS]
    kept = [f"{name} {_shown(old)} (given {_shown(new)})"
            for name, old, new in _differences({k: saved[k] for k in recipe if k in saved}, now)]
    return _with_saved(given, saved, recipe), kept
