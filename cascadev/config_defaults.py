"""Defaults of absent config keys: the shipped config (``configs/s1024_effn_f32.py``) is their one source.

A config that inherits the shipped one (``_base_``) has every key. One written from scratch falls back,
key by key, to the shipped config's value, never to a second copy of it in the code, so the code and
the released recipe cannot drift apart (tests/test_config_defaults.py checks the defaults that remain in
function signatures against the shipped config).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .errors import CascadeVError

__all__ = ["MISSING", "SHIPPED_CONFIG", "lookup", "setting", "shipped"]

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "s1024_effn_f32.py"
MISSING = object()  # what lookup returns for an absent key (None is a value)


@functools.lru_cache(maxsize=1)
def shipped() -> dict[str, Any]:
    """The shipped config as a plain dict (empty when the package runs without its configs/ folder)."""
    from mmengine.config import Config

    return Config.fromfile(str(SHIPPED_CONFIG)).to_dict() if SHIPPED_CONFIG.is_file() else {}


def lookup(node: Any, key: str) -> Any:
    """``node[a][b]`` for the dotted key ``a.b`` (an mmengine Config or nested dicts), or ``MISSING``."""
    for part in key.split("."):
        if isinstance(node, (str, bytes)):  # a value where a section was expected ("in" would find substrings)
            return MISSING
        try:
            if part not in node:
                return MISSING
            node = node[part]
        except (TypeError, KeyError):  # another value where a section was expected
            return MISSING
    return node


def setting(cfg: Any, key: str) -> Any:
    """The value of the dotted ``key`` in ``cfg``, else the shipped config's; one error line if neither has it."""
    for source in (cfg, shipped()):
        value = lookup(source, key)
        if value is not MISSING:
            return value
    raise CascadeVError(
        f"the config has no key {key}, and the shipped config {SHIPPED_CONFIG} that gives its default is missing"
    )
