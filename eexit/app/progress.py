"""Progress bars (tqdm on stderr) for every loop of the command line that takes more than a second."""
from __future__ import annotations

import sys
from typing import Iterable, Optional

#: None: bars when stderr is a terminal; False: never; True: always. Set by ``--progress``.
ENABLED: Optional[bool] = None


def bar(iterable: Iterable, total: Optional[int] = None, desc: str = "", disable: bool = False):
    """A tqdm bar over ``iterable`` (``total``: its length when it has none); a silent pass-through when
    ``disable``, when bars are off (see :data:`ENABLED`) or when tqdm is missing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a requirement of the command line
        tqdm = None
    enabled = sys.stderr.isatty() if ENABLED is None else ENABLED
    if tqdm is None or not enabled or disable:
        return _Silent(iterable)
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


class _Silent:
    """What :func:`bar` returns when bars are off: iterates, and ignores the postfix."""

    def __init__(self, iterable: Iterable) -> None:
        self._it = iterable

    def __iter__(self):
        return iter(self._it)

    def set_postfix(self, *args, **kwargs) -> None:
        return None
