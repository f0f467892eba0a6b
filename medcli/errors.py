"""The one exception type users see as a clean, one-line message.

Library code raises :class:`MedcliError` for every problem caused by the input (a bad file, a wrong key, an
impossible option combination). The CLI turns it into ``error: <message>`` on stderr and exit code 1, without a
traceback. Anything else is a bug in medcli and keeps its traceback.
"""

from __future__ import annotations


class MedcliError(Exception):
    """A problem with the user's input; the message names the file/key and the fix."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (an exception's message, perhaps over several lines) as one line of at most ``limit`` characters,
    for quoting a library's error inside a :class:`MedcliError`."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
