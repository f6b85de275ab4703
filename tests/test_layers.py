"""The dependency rule, checked on every import in ``src/mqbroker``.

Packages are layered; a module may import from its own package and from
the layers below it, never from one above, counting imports inside
functions and under ``TYPE_CHECKING`` too. So no two packages import each
other, directly or through others. The order (low to high):

- base modules: errors, config, log, clock;
- protocol (sans-I/O), then persistence;
- model (the message model shared by everything above);
- exchanges, queues, streams (each may use the ones listed before it);
- broker (state, publish pipeline, command layer, AMQP sessions);
- management (HTTP API), cluster, server (the only trio layer);
- testing and the command-line entry point; ctl (an HTTP client only,
  which imports nothing of the broker at all); perf and bench (tools).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "mqbroker"

ORDER = [
    "__init__", "errors", "config", "log", "clock",
    "protocol", "persistence", "model",
    "exchanges", "queues", "streams",
    "broker",
    "management", "cluster", "server",
    "testing", "__main__",
    "perf", "bench",
]
# ctl talks to the HTTP API only: nothing of the broker may leak into it.
ISOLATED = {"ctl": {"__init__"}}


def _unit(module: str) -> str:
    """mqbroker.broker.vhost -> broker; mqbroker.errors -> errors."""
    parts = module.split(".")
    if len(parts) < 2:
        return "__init__"
    name = parts[1]
    if (SRC / f"{name}.py").exists() or (SRC / name).is_dir():
        return name
    return "__init__"  # a name from the package itself (__version__)


def _imports(path: Path) -> list[tuple[int, str]]:
    module = "mqbroker." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base == "mqbroker" else [base]
            found += [(node.lineno, n) for n in names]
    return [(line, name) for line, name in found if name.split(".")[0] == "mqbroker"]


def _files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    unit = _unit("mqbroker." + ".".join(path.relative_to(SRC).with_suffix("").parts))
    wrong = []
    for line, name in _imports(path):
        target = _unit(name)
        if target == unit:
            continue
        if unit in ISOLATED:
            ok = target in ISOLATED[unit]
        else:
            assert unit in ORDER, f"{unit} has no place in the layer order"
            assert target in ORDER, f"{target} has no place in the layer order"
            ok = ORDER.index(target) < ORDER.index(unit)
        if not ok:
            wrong.append(f"line {line}: {unit} imports {name} ({target} is not below it)")
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_function_local_and_relative_imports() -> None:
    """The check itself: imports inside functions, under TYPE_CHECKING and
    relative ones are all found (a check that sees nothing passes)."""
    delayed = dict((n, line) for line, n in _imports(SRC / "exchanges" / "delayed.py"))
    assert "mqbroker.exchanges.exchange" in delayed  # under TYPE_CHECKING
    registry = [n for _, n in _imports(SRC / "exchanges" / "registry.py")]
    assert "mqbroker.errors" in registry  # from ..errors import ...
    sample = ast.parse("def f():\n    from mqbroker.broker.broker import Broker\n")
    local = [n for n in ast.walk(sample) if isinstance(n, ast.ImportFrom)]
    assert local and _unit(local[0].module or "") == "broker"
    assert ORDER.index("broker") > ORDER.index("queues")


MAX_LINES = 600


@pytest.mark.parametrize(
    "path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC))
)
def test_no_module_over_600_lines(path: Path) -> None:
    """One job per module: about 400 lines, never more than 600."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines"
