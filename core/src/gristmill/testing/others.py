"""Executors: every task's result once, in any order, with one worker or several; a task's error
raised to the caller. Presets: a source spec some registered source claims, and a tokenizer
that resolves."""

from __future__ import annotations

from gristmill.plugin.components import ExecutorType, PresetType, SourceType
from gristmill.testing.kit import Check, Context

TASKS = list(range(9))


def square(task: int) -> int:
    """A task: module-level, so that it pickles into another process."""
    return task * task


def fail_at_five(task: int) -> int:
    if task == 5:
        raise ValueError("task 5 fails on purpose")
    return task


def executor_checks(record: ExecutorType) -> dict[str, Check]:
    return {"map": check_map, "errors": check_errors}


def check_map(record: ExecutorType, context: Context) -> None:
    for workers in (1, 2):
        results = list(record.factory(workers=workers).map(square, TASKS))
        assert sorted(results) == [square(t) for t in TASKS], f"{workers} workers: {results}"


def check_errors(record: ExecutorType, context: Context) -> None:
    for workers in (1, 2):
        try:
            list(record.factory(workers=workers).map(fail_at_five, TASKS))
        except ImportError:
            raise  # the executor's library is missing: a skip, not a failure
        except Exception as exc:
            assert "task 5 fails on purpose" in str(exc), f"{workers} workers raised {exc!r}"
        else:
            raise AssertionError(f"{workers} workers: a failing task raised nothing")


def preset_checks(record: PresetType) -> dict[str, Check]:
    return {"resolves": check_resolves}


def check_resolves(record: PresetType, context: Context) -> None:
    from gristmill.ingest.tokenizers import resolve_tokenizer

    manager = context.manager
    claimed = [manager.claim(SourceType, record.source, by=by) for by in ("prefixes", "suffixes")]
    assert any(claimed), f"preset {record.name!r}: no source claims {record.source!r}"
    if record.tokenizer is not None:
        resolve_tokenizer(record.tokenizer, manager)  # raises, naming the choices, if none
