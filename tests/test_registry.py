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
