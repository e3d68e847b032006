"""One line for a pydantic validation error of a nasdet config: the key path as the user wrote it
(union tags such as a backbone's class left out), what is wrong, what is expected."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError


def describe_error(err: ValidationError, root: type[BaseModel]) -> str:
    """One line for the first error: key path, what is wrong, what is expected."""
    first = err.errors()[0]
    loc, model, choices = _walk(root, [str(p) for p in first["loc"]])
    key = ".".join(loc) or "(top level)"
    if first["type"] == "union_tag_invalid":
        got = first["ctx"]["tag"]
        what = "format" if loc and loc[-1] == "data" else "name"
        expected = ", ".join(choices) or str(first["ctx"].get("expected_tags", ""))
        return f"{key}.{what}: unknown {what} {got!r} — expected one of {expected}"
    if first["type"] == "extra_forbidden":
        known = sorted(model.model_fields) if hasattr(model, "model_fields") else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{key}: unknown key — {hint}"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    msg = first["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}{shown}"


def _walk(root: type[BaseModel], raw_loc: list[str]) -> tuple[list[str], Any, list[str]]:
    """A pydantic error path without union tags, the section that holds its last key, and the
    names the union at the end of the path accepts (for an unknown ``name``/``format``)."""
    loc: list[str] = []
    model: Any = root
    choices: list[str] = []
    for part in raw_loc:
        members = _members(model)
        if part in {m.__name__ for m in members} | _tags(members):
            model = next((m for m in members if m.__name__ == part), None) or next(
                m for m in members if part in _tags([m])
            )
            continue
        loc.append(part)
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return loc, model, choices
        model = _section_type(field.annotation)
        choices = sorted(_tags(_members(model)))
    return loc, model, choices


def _members(annotation: Any) -> list[type[BaseModel]]:
    """The model classes a section may be: a union's members, or the one class."""
    if hasattr(annotation, "model_fields"):
        return [annotation]
    return _union_members(annotation)


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    """The model classes of a (possibly ``Annotated``) union, else []."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _union_members(args[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        out = []
        for a in args:
            inner = typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a
            if hasattr(inner, "model_fields") and inner not in out:
                out.append(inner)
        return out
    return []


def _tags(members: Sequence[type[BaseModel]]) -> set[str]:
    """The ``name`` (or data ``format``) values the member classes answer to."""
    out: set[str] = set()
    for m in members:
        for key in ("name", "format"):
            if key in m.model_fields:
                out |= {str(a) for a in typing.get_args(m.model_fields[key].annotation)}
    return out


def _section_type(annotation: Any) -> Any:
    """The model class or union inside ``X | None`` / ``list[X]`` annotations (else as is)."""
    if hasattr(annotation, "model_fields") or _union_members(annotation):
        members = _union_members(annotation)
        if members and all(hasattr(m, "model_fields") for m in members) and len(members) == 1:
            return members[0]
        return annotation
    for arg in typing.get_args(annotation):
        if hasattr(arg, "model_fields") or _union_members(arg):
            return _section_type(arg)
    return annotation
