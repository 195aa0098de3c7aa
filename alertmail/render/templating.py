"""The mails' Jinja2 templates: the environment, a user's template with the built-in one as fallback,
and a message put together from a mail's two templates (``KIND.txt.j2``, ``KIND.html.j2``).

Every mail alertmail writes (alert, digest, heartbeat) goes through ``compose``; what each
says is made elsewhere (``alertmail.render.mail``, ``.digest``, ``.heartbeat``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from alertmail.render.format import format_bytes, format_value, header_safe, human_duration
from alertmail.render.view import RenderContext

log = logging.getLogger("alertmail.render.mail")  # the name its warnings always had

BUILTIN_TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=8)
def _environment(user_dir: str | None) -> Any:
    """A Jinja2 environment: strict (a typo is an error, not an empty string), HTML autoescaped.

    User templates may extend the built-in ones as ``builtin/alert.html.j2``.
    """
    import jinja2

    builtin = jinja2.FileSystemLoader(str(BUILTIN_TEMPLATES))
    loaders: list[Any] = [jinja2.PrefixLoader({"builtin": builtin})]
    loaders.insert(0, jinja2.FileSystemLoader(user_dir) if user_dir else builtin)
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(("html", "htm", "xml", "html.j2"), default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(bytes=format_bytes, duration=human_duration, value=format_value)
    return env


def render_template(name: str, variables: Mapping[str, Any], ctx: RenderContext) -> str | None:
    """The user's template ``name`` if there is one and it works, else the built-in one; None if both fail."""
    user_dir = ctx.templates_dir
    if user_dir is not None and (Path(user_dir) / name).is_file():
        try:
            return _environment(str(user_dir)).get_template(name).render(variables)
        except Exception as exc:  # any failure of a user's template: syntax, undefined name, a raise
            log.warning(
                "template %s failed (%s: %s); using the built-in one",
                Path(user_dir) / name,
                type(exc).__name__,
                header_safe(exc, 300),
            )
    try:
        return _environment(None).get_template(name).render(variables)
    except Exception:
        log.exception("built-in template %s failed", name)
        return None


def compose(
    kind: str,
    variables: Mapping[str, Any],
    ctx: RenderContext,
    fallback: Callable[[], str],
    images: Sequence[tuple[str, bytes]] = (),
) -> EmailMessage:
    """A mail from the templates ``KIND.txt.j2`` and ``KIND.html.j2``: the subject, a text part (``fallback()``
    when even the built-in template fails), the HTML part when it renders, and its inline images."""
    text = render_template(f"{kind}.txt.j2", variables, ctx) or fallback()
    html = render_template(f"{kind}.html.j2", variables, ctx)

    msg = EmailMessage()
    msg["Subject"] = header_safe(variables["subject"], limit=250)
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
        *_, related = msg.iter_parts()  # the HTML part add_alternative made
        for n, (cid, png) in enumerate(images, 1):
            related.add_related(png, "image", "png", cid=cid, disposition="inline", filename=f"chart-{n}.png")
    return msg
