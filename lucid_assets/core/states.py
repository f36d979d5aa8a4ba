"""The one session state machine. Every transition in the platform is checked here."""
from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    CREATED = "created"
    RECORDING = "recording"
    PAUSED = "paused"
    FINALIZING = "finalizing"
    PROCESSING = "processing"
    SEALED = "sealed"
    FAILED = "failed"
    DELETED = "deleted"


class Event(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    FINALIZE = "finalize"  # the recorder has flushed and registered its last segment
    SEAL = "seal"  # the manifest is signed and catalogued
    FAIL = "fail"
    RETRY = "retry"
    DELETE = "delete"


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.CREATED, E.START): S.RECORDING,
    (S.RECORDING, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.RESUME): S.RECORDING,
    (S.RECORDING, E.STOP): S.FINALIZING,
    (S.PAUSED, E.STOP): S.FINALIZING,
    (S.FINALIZING, E.FINALIZE): S.PROCESSING,
    (S.PROCESSING, E.SEAL): S.SEALED,
    (S.RECORDING, E.FAIL): S.FAILED,
    (S.FINALIZING, E.FAIL): S.FAILED,
    (S.PROCESSING, E.FAIL): S.FAILED,
    (S.FAILED, E.RETRY): S.PROCESSING,
    (S.CREATED, E.DELETE): S.DELETED,
    (S.SEALED, E.DELETE): S.DELETED,
    (S.FAILED, E.DELETE): S.DELETED,
}

TERMINAL = frozenset({S.DELETED})


class IllegalTransition(Exception):
    def __init__(self, state: State, event: Event):
        self.state, self.event = State(state), Event(event)
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s == self.state)
        super().__init__(
            f"cannot {self.event.value} a session that is {self.state.value}"
            + (f"; allowed: {', '.join(allowed)}" if allowed else "; no transition is allowed")
        )


def next_state(state: State | str, event: Event | str) -> State:
    """The state after `event`, or IllegalTransition."""
    try:
        return TRANSITIONS[(State(state), Event(event))]
    except KeyError:
        raise IllegalTransition(State(state), Event(event)) from None
