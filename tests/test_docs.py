"""Every setting and every CLI option is documented (datasette's habit)."""

from __future__ import annotations

import argparse

from pydantic import BaseModel

from aitrail.cli import build_parser
from aitrail.settings import Settings
from tests.conftest import REPO

DOC = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")


def _setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _setting_names(annotation, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def test_every_setting_is_documented_with_its_variable():
    for name in _setting_names(Settings):
        assert f"`{name}`" in DOC, name
        assert f"`AITRAIL_{name.replace('.', '__').upper()}`" in DOC, name


def _options(parser: argparse.ArgumentParser, path: str = "aitrail"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.option_strings and action.dest not in ("help", "version"):
            yield path, max(action.option_strings, key=len)


def test_every_cli_option_is_documented():
    missing = [f"{path} {option}" for path, option in _options(build_parser()) if f"`{option}`" not in DOC]
    assert not missing, missing
