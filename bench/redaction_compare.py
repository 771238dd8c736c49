"""Redaction's cost before and after a change of rules, in one process:
`python -m bench.redaction_compare [--events N] [--rounds R] [--before COMMIT]`.

The redaction module of COMMIT (default: the last one before the rule data arrived) is
loaded beside the current one; `finalize` and `capture_nowait` then run alternately with
either module's functions (alternating rounds, best of R), for the benchmark's clean event
and the same event carrying secrets (bench/redaction.py). Prints CPU µs per event and the
ratio after/before. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.producer import audit_event
from bench.redaction import _best_us, _capture_nowait_us, _suspicious
from service import events, redaction
from service.events import AuditEvent

BEFORE = "b2222d0"  # the hand-written token list, before service/redaction_rules.json
PATCHED = (
    "json_precheck",
    "may_hold_secret_json",
    "redact_sensitive",
    "redact_sensitive_in_string",
    "redact_strings",
)


def load_before(commit: str) -> ModuleType:
    """The redaction module as it was at `commit`, imported under another name, with the
    rule module (service/redaction_rules.py) of the same commit when it had one."""
    if _source(commit, "service/redaction_rules.py") is not None:
        load_at(commit, "service/redaction_rules.py", "redaction_rules_before", {})
        imports = {b"from service.redaction_rules import": b"from redaction_rules_before import"}
    else:
        imports = {}
    return load_at(commit, "service/redaction.py", "redaction_before", imports)


def _source(commit: str, path: str) -> bytes | None:
    shown = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True)
    return shown.stdout if shown.returncode == 0 else None


def load_at(commit: str, path: str, name: str, imports: dict[bytes, bytes]) -> ModuleType:
    """The module at `path` as it was at `commit`, imported as `name` (its imports of other
    modules of that commit renamed as `imports` says)."""
    source = _source(commit, path)
    assert source is not None, f"{commit}:{path}"
    for old, new in imports.items():
        source = source.replace(old, new)
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_bytes(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _functions(module: ModuleType) -> dict[str, Any]:
    """`module`'s functions under the names service.events calls (an older module has no
    json_precheck or redact_strings and takes no `cards`: adapted)."""
    if hasattr(module, "redact_strings"):
        return {name: getattr(module, name) for name in PATCHED}
    if hasattr(module, "json_precheck"):
        return {
            **{name: getattr(module, name) for name in PATCHED if hasattr(module, name)},
            "redact_strings": lambda texts, extra=frozenset(), cards=True: [
                module.redact_sensitive_in_string(t, extra, cards=cards) for t in texts
            ],
        }
    return {
        "json_precheck": lambda data, extra=frozenset(): (
            module.may_hold_secret_json(data, extra),
            True,
        ),
        "may_hold_secret_json": module.may_hold_secret_json,
        "redact_sensitive": lambda v, extra=frozenset(), cards=True: module.redact_sensitive(
            v, extra
        ),
        "redact_sensitive_in_string": lambda t, extra=frozenset(), cards=True: (
            module.redact_sensitive_in_string(t, extra)
        ),
        "redact_strings": lambda texts, extra=frozenset(), cards=True: [
            module.redact_sensitive_in_string(t, extra) for t in texts
        ],
    }


@contextlib.contextmanager
def rules_of(module: ModuleType) -> Iterator[None]:
    """Let service.events redact with `module`'s functions."""
    saved = {name: getattr(events, name) for name in PATCHED}
    for name, function in _functions(module).items():
        setattr(events, name, function)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(events, name, value)


def measure(batch: list[AuditEvent], module: ModuleType, rounds: int) -> dict[str, float]:
    n = len(batch)
    with rules_of(module):
        return {
            "redact_event": _best_us(lambda: [events.redact_event(e) for e in batch], n, rounds),
            "finalize": _best_us(lambda: [events.finalize(e) for e in batch], n, rounds),
            "capture_nowait": asyncio.run(_capture_nowait_us(batch, rounds)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--before", default=BEFORE)
    args = parser.parse_args()
    logging.getLogger("auditq").setLevel(logging.CRITICAL)  # the never-sent events' lines
    before = load_before(args.before)
    clean = [audit_event("bench", i) for i in range(args.events)]
    batches = {"clean": clean, "with secrets": [_suspicious(e) for e in clean]}
    for name, batch in batches.items():
        best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
        for _ in range(args.alternations):  # alternate, keep each side's best
            for side, module in (("before", before), ("after", redaction)):
                for figure, us in measure(batch, module, args.rounds).items():
                    best[side][figure] = min(us, best[side].get(figure, us))
        for figure in best["before"]:
            b, a = best["before"][figure], best["after"][figure]
            print(f"{name:>12} {figure:>14}: before {b:6.2f} us, after {a:6.2f} us ({a / b:4.2f}x)")
    # The redaction's own share of finalize: the pre-check alone for a clean event.
    data = events._encoder.encode(events.finalize(clean[0])[0])
    for side, module in (("before", before), ("after", redaction)):
        us = _best_us(lambda m=module: [m.may_hold_secret_json(data) for _ in clean], len(clean), 5)
        print(f"{'clean':>12} {'pre-check':>14}: {side} {us:6.2f} us")


if __name__ == "__main__":
    main()
