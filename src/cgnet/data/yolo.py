"""placeholder"""
from __future__ import annotations

from pathlib import Path

from .import_core import Found, ImportOptions


def read(src: Path, opts: ImportOptions) -> Found:
    raise NotImplementedError
