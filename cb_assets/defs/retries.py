"""Which failures are worth another attempt.

A RetryPolicy has no exception filter: it retries whatever a step raised unless that was a
`dg.Failure(allow_retries=False)`. So every asset is wrapped by `deterministic_failures`: errors that pass
with time (PostgreSQL connection lost or refusing, a serialization conflict, the broker away) propagate as
they are and the op's RETRY_POLICY tries again with exponential backoff; anything else (a schema violation,
an hour with invalid raw ticks, a bug) becomes a Failure that is not retried, since it would fail the same way.
Runs that die as a whole (the run worker killed) are retried by Dagster's run retries (dagster.yaml).

Dagster also applies the RetryPolicy to interrupts, and terminating a run is an interrupt: a terminated
fine-tune would start again inside the same run and succeed as if nobody had asked it to stop. An interrupt
of a run that is being canceled therefore becomes a Failure that is not retried, and the run ends CANCELED;
any other interrupt (a worker shutting down) keeps Dagster's behaviour.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
import psycopg
from confluent_kafka import KafkaException

TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    KafkaException,
    ConnectionError,
)

RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

F = TypeVar("F", bound=Callable[..., Any])


def _final(exc: BaseException) -> BaseException:
    if isinstance(exc, TRANSIENT):
        return exc
    if isinstance(exc, dg.Failure):
        if not exc.allow_retries:
            return exc
        return dg.Failure(description=exc.description, metadata=exc.metadata, allow_retries=False)
    if isinstance(exc, dg.DagsterError):
        return exc  # the framework's own signals (e.g. a run being terminated) go through untouched
    return dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False)


_INTERRUPTS = (KeyboardInterrupt, dg.DagsterExecutionInterruptedError)
_CAUGHT = (Exception, *_INTERRUPTS)  # never GeneratorExit or SystemExit


def _run_is_being_canceled(args: tuple[Any, ...]) -> bool:
    context = next((a for a in args if isinstance(a, dg.OpExecutionContext | dg.AssetExecutionContext)), None)
    if context is None:
        return False
    try:
        run = context.instance.get_run_by_id(context.run_id)
    except Exception:  # the instance unreachable: keep Dagster's default
        return False
    return run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


def _replacement(exc: BaseException, args: tuple[Any, ...]) -> BaseException | None:
    """What to raise instead of `exc`; None: `exc` itself."""
    if isinstance(exc, _INTERRUPTS):
        if _run_is_being_canceled(args):
            return dg.Failure(description="the run was terminated", allow_retries=False)
        return None
    final = _final(exc)
    return None if final is exc else final


def deterministic_failures(fn: F) -> F:
    """Wrap an asset's compute function (plain or generator) as described in the module docstring."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except _CAUGHT as exc:
                replacement = _replacement(exc, args)
                if replacement is None:
                    raise
                raise replacement from exc

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _CAUGHT as exc:
            replacement = _replacement(exc, args)
            if replacement is None:
                raise
            raise replacement from exc

    return wrapper  # type: ignore[return-value]
