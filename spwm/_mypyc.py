"""
What the modules that C{spwm compile} builds need from mypyc at run time,
importable without it.

mypyc compiles a class to a C type of fixed attributes (a "native"
class). A class that derives from a Python class it does not compile
(Twisted's protocols, factories and services) or from more than one
built-in type stays a Python class whose methods are compiled: it is
marked C{@mypyc_attr(native_class=False)}. A plain install (no mypy)
runs the source, where the mark does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

from twisted.logger import Logger

_T = TypeVar("_T")

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr
else:
    try:
        from mypy_extensions import mypyc_attr
    except ImportError:

        def mypyc_attr(*args: Any, **kwargs: Any) -> Callable[[_T], _T]:
            return lambda cls: cls


__all__ = ["mypyc_attr", "instance_logger"]


def instance_logger(obj: object) -> Logger:
    """
    The logger a class attribute C{log = Logger()} gives C{obj}: the
    namespace of C{obj}'s class and C{obj} as its source. A compiled
    (native) class does not bind the attribute's C{__get__}; its
    C{__init__} sets this instead.
    """
    cls = type(obj)
    return Logger(f"{cls.__module__}.{cls.__name__}", obj)
