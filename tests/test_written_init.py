"""
Tests for the C{__init__} written out in data classes that C{spwm compile}
builds: each takes the fields the data class would take, in the same
order with the same defaults, and sets every field.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os

import spwm

from twisted.trial.unittest import SynchronousTestCase

from spwm.compiled import MODULES


def _written_inits() -> list[tuple[type, ast.FunctionDef]]:
    """
    Every data class of L{MODULES} with its C{__init__} written out, and
    that C{__init__}'s syntax tree.
    """
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        # (the source, whether the module runs from it or built)
        source = os.path.join(os.path.dirname(spwm.__file__), *name.split(".")[1:]) + ".py"
        with open(source, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name, None)
            if cls is None or not dataclasses.is_dataclass(cls):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    found.append((cls, item))
    return found


def _assigned(init: ast.FunctionDef) -> set[str]:
    """
    The attributes C{init} sets: C{self.x = ...} or
    C{object.__setattr__(self, "x", ...)}.
    """
    names = set()
    for node in ast.walk(init):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__setattr__"
            and len(node.args) == 3
            and isinstance(node.args[1], ast.Constant)
        ):
            names.add(node.args[1].value)
    return names


class WrittenInitTests(SynchronousTestCase):
    """
    The written-out C{__init__} of each data class of the compiled modules.
    """

    def test_some(self) -> None:
        """
        The hot classes are among them.
        """
        names = {cls.__name__ for cls, _ in _written_inits()}
        self.assertTrue({"Header", "SipMessage", "Via", "NameAddr", "MediaDescription", "Dialog"} <= names, names)

    def test_as_the_fields(self) -> None:
        """
        The parameters are the fields the data class takes, in order, with
        their defaults (C{None} for a default factory); every field is set.
        """
        for cls, init in _written_inits():
            fields = dataclasses.fields(cls)
            args = init.args.args[1:]
            self.assertEqual([a.arg for a in args], [f.name for f in fields if f.init], cls)
            defaults = [None] * (len(args) - len(init.args.defaults)) + list(init.args.defaults)
            for f, default in zip([f for f in fields if f.init], defaults):
                if f.default is not dataclasses.MISSING:
                    self.assertEqual(ast.literal_eval(default), f.default, (cls, f.name))
                elif f.default_factory is not dataclasses.MISSING:
                    self.assertEqual(ast.literal_eval(default), None, (cls, f.name))
                else:
                    self.assertIsNone(default, (cls, f.name))
            self.assertEqual(_assigned(init), {f.name for f in fields}, cls)
