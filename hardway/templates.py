"""Templates to text: one Jinja environment over ``templates/`` with StrictUndefined.

A missing value is a HardwayError naming template, line and variable. Templates hold no logic
but loops; command lines come in as argv lists and are written by the ``systemd_exec`` filter.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from hardway.errors import HardwayError
from hardway.systemd import systemd_exec

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def _json(value: Any) -> str:
    """A JSON scalar or structure, also valid in YAML and (for strings) in TOML."""
    return json.dumps(value, sort_keys=True)


@cache
def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # units and configs, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["systemd_exec"] = systemd_exec
    env.filters["json"] = _json
    return env


def render(name: str, /, *, templates_dir: Path = TEMPLATES_DIR, **context: Any) -> str:
    """Render ``templates/<name>``; a missing variable raises HardwayError naming template and variable."""
    env = environment(templates_dir)
    try:
        return env.get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        where = _template_line(exc, env, name)
        raise HardwayError(f"template {where}: {exc.message} (pass it in the render context)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise HardwayError(f"template {exc.name or name}:{exc.lineno}: syntax error: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise HardwayError(f"template {exc.name} not found under {templates_dir}") from None
    except jinja2.TemplateError as exc:
        raise HardwayError(f"template {name}: {exc.message}") from None


def _template_line(exc: BaseException, env: jinja2.Environment, name: str) -> str:
    """``name:line`` of the innermost template frame of ``exc`` (Jinja rewrites tracebacks so)."""
    found = name
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        try:
            rel = Path(filename).resolve().relative_to(Path(env.loader.searchpath[0]).resolve())  # type: ignore[union-attr]
        except (ValueError, AttributeError, IndexError):
            rel = None
        if rel is not None:
            found = f"{rel}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found
