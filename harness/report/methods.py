"""What the reports know about methods: only what each method declares at registration
(``Method.display``, harness/backbone/method.py) — colour, order, ablation titles, symbols and views."""

from __future__ import annotations

from collections.abc import Mapping

from harness.backbone.method import Display, load_plugins
from harness.registry import RegistryError

UNKNOWN_ORDER = 10_000  # a method that is no longer registered sorts last


def _entry(method: str):
    try:
        return load_plugins().get(method)
    except RegistryError:
        return None


def display(method: str) -> Display:
    """The display facts of ``method`` (a registered name or preset; unknown names get the defaults)."""
    entry = _entry(method)
    return entry.plugin.display if entry is not None else Display()


def order_key(method: str) -> tuple[int, int, str]:
    """Tables and legends: by the plugin's declared order, the plugin before its presets (in
    registration order), then by name."""
    registry = load_plugins()
    entry = _entry(method)
    if entry is None:
        return (UNKNOWN_ORDER, 0, method)
    family = [name for name in registry.names() if registry.get(name).plugin is entry.plugin]
    return (entry.plugin.display.order, family.index(entry.name), method)


def family_color(plugin: str) -> str | None:
    return display(plugin).color


def ablation_titles() -> dict[str, str]:
    """Method or preset → its row title in the ablation table, over every registered method."""
    titles: dict[str, str] = {}
    for name in load_plugins().names():
        titles |= dict(display(name).ablation)
    return titles


def views() -> dict[str, tuple[str, str]]:
    """Layout name → (swept hyper-parameter or ``prefix_``, title), over every registered method."""
    found: dict[str, tuple[str, str]] = {}
    for name in load_plugins().names():
        found |= dict(display(name).views)
    return found


def param_symbol(axis: str) -> str:
    """``params.gamma`` → γ when a method declares the symbol, else the axis itself."""
    name = axis.removeprefix("params.")
    for method in load_plugins().names():
        symbols: Mapping[str, str] = display(method).symbols
        if axis.startswith("params.") and name in symbols:
            return symbols[name]
    return axis


def value_title(axis: str, value: object) -> str | None:
    """The declared title of a hyper-parameter's value (``reweight: softmax`` → "softmax (Eq. 2)")."""
    name = axis.removeprefix("params.")
    for method in load_plugins().names():
        titles = display(method).value_titles.get(name)
        if axis.startswith("params.") and titles and isinstance(value, str) and value in titles:
            return titles[value]
    return None
