"""Sending mime bundles to the notebook from the kernel, cheaply (the views' one way out).

Used by the display chooser and the widget view alike, so neither imports the other.
"""

from __future__ import annotations

import sys
from typing import Any


def _shell() -> Any:
    """The running IPython shell, or None (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    return get_ipython() if get_ipython is not None else None


def _flush_pending_streams() -> None:
    """Flush stdout/stderr if they hold unsent text, so a display keeps its place after it.

    ``IPython.display.display`` flushes both streams every time, and in a kernel
    each flush waits for a round trip to the kernel's I/O thread (about 0.2 ms when
    idle, a millisecond or more on a busy machine) whether or not anything was
    written. ipykernel's ``OutStream`` says whether text is waiting
    (``_flush_pending``); other streams are flushed as display would.
    """
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "_flush_pending", True):
            stream.flush()


def _send(bundle: dict[str, Any], display_id: str | None, update: bool) -> bool:
    """Send a display message straight on the kernel's IOPub socket; False if we cannot.

    What ipykernel's display publisher does after its stream flush. Falls back
    (False) outside ipykernel, or while a display hook is installed (something
    captures displays: let ``display`` run it).
    """
    pub = getattr(_shell(), "display_pub", None)
    session, socket = getattr(pub, "session", None), getattr(pub, "pub_socket", None)
    if session is None or socket is None or getattr(pub, "_hooks", True):
        return False
    content = {
        "data": bundle,
        "metadata": {},
        "transient": {"display_id": display_id} if display_id else {},
    }
    msg_type = "update_display_data" if update else "display_data"
    session.send(socket, msg_type, content, parent=pub.parent_header, ident=pub.topic)
    return True


def publish(bundle: dict[str, Any], display_id: str | None = None, update: bool = False) -> None:
    """Display a mime bundle in the kernel (or update the display ``display_id``), cheaply.

    An update adds no output, so no stream needs flushing before it; a new
    output flushes only streams with text waiting. Anything unusual goes
    through ``IPython.display.display``.
    """
    if not update:
        _flush_pending_streams()
    if _send(bundle, display_id, update):
        return
    from IPython.display import display

    if display_id is None:
        display(bundle, raw=True)
    else:
        display(bundle, raw=True, display_id=display_id, update=update)
