import pytest

from medgrain.registry import Registry, UnknownEntryError


def test_register_get_names_and_help():
    reg = Registry("widget")

    @reg.register("b", help="the b widget")
    def b():
        return 2

    @reg.register("a")
    class A:
        """An a widget.

        More text."""

    assert reg.names() == ["b", "a"]  # registration order, not sorted
    assert reg.get("b") is b and reg.get("a") is A
    assert reg.help("b") == "the b widget" and reg.help("a") == "An a widget."
    assert "a" in reg and "c" not in reg and len(reg) == 2
    assert reg.names("b*") == ["b"]


def test_duplicate_and_unknown_names_are_errors():
    reg = Registry("widget")
    reg.add("x", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("x", 2)
    reg.add("x", 3, replace=True)
    assert reg.get("x") == 3
    with pytest.raises(UnknownEntryError, match="unknown widget 'y'; known: x"):
        reg.get("y")
    reg.unregister("x")
    assert reg.names() == []


def test_data_entries_get_no_help_from_their_type():
    reg = Registry("preset")
    reg.add("tiny", {"embed_dim": 8})
    assert reg.help("tiny") == ""


def test_registry_choices_import_the_registry_only_when_used(monkeypatch):
    import argparse
    import sys
    import types

    from medgrain.registry import RegistryChoices

    reg = Registry("widget")
    reg.add("a", 1)
    reg.add("b", 2)
    module = types.ModuleType("widgets_for_test")
    module.WIDGETS = reg
    imported = []
    monkeypatch.setitem(sys.modules, "widgets_for_test", module)
    choices = RegistryChoices("widgets_for_test", "WIDGETS")
    monkeypatch.setattr(choices, "registry", lambda real=choices.registry: imported.append(1) or real())

    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("widget", choices=choices, metavar="WIDGET", help="one of: %(choices)s")
    assert not imported  # building the parser did not look
    assert parser.parse_args(["b"]).widget == "b"
    assert "one of: a, b" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["c"])
    assert imported
