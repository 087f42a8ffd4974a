"""The live cluster view served at ``GET /ui``: one self-contained HTML page.

No build step and no external assets (styles and script are inline), so it works
offline. The page polls ``GET /ui/state`` of every member it learns of (the
members map of ``/status``) a few times a second, straight from the browser: it
keeps working when the node that served it is killed. See docs/operations.md
("The live view").
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

__all__ = ["page"]


@cache
def page() -> bytes:
    """The page's bytes (read once from the package)."""
    return files(__package__).joinpath("index.html").read_bytes()
