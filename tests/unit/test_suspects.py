"""Suspect messages: isolated after one learner failure, refused after the limit (no broker)."""

from __future__ import annotations

import pytest

from connectors.settings import Settings
from connectors.signing import Signer
from pipeline.outgoing import to_records
from pipeline.suspects import Suspect, SuspectError, SuspectLedger, decode_suspects, encode_suspects
from pipeline.worker_core import WorkerCore
from wire.readings import DeadLetter, Reading, encode_readings

SETTINGS = Settings(n_features=2, micro_batch=100)


def message(device: str, offset: int, partition: int = 0) -> tuple[bytes, int, int]:
    return encode_readings([Reading(device, (float(offset), 1.0), 0.5)]), partition, offset


class PoisonedCore(WorkerCore):
    """A learner that raises whenever a reading of device ``poison`` is in its micro-batch."""

    def _learn(self, part: list[tuple[Reading, int]]) -> list:  # type: ignore[type-arg]
        if any(r.device_id == "poison" for r, _ in part):
            raise RuntimeError("the learner cannot take this reading")
        return super()._learn(part)


def run_with_restarts(
    messages: list[tuple[bytes, int, int]], max_restarts: int = 10
) -> tuple[WorkerCore, list[DeadLetter], int]:
    """Feed ``messages`` as the app does (pieces of the ledger); on a failure 'restart' with the ledger."""
    ledger = SuspectLedger()
    for restart in range(max_restarts + 1):
        core = PoisonedCore(SETTINGS, Signer.generate())
        core.restore(0, None)
        core.suspects = ledger
        letters: list[DeadLetter] = []
        try:
            for piece in ledger.pieces(messages):
                try:
                    out = to_records(SETTINGS, core.on_readings(piece))
                except RuntimeError:
                    ledger.failed(piece)
                    raise
                letters += [DeadLetter.decode(o.value) for o in out if o.topic == SETTINGS.topic_deadletter]
        except RuntimeError:
            continue
        return core, letters, restart
    raise AssertionError("never got through")


def test_a_poison_message_is_dead_lettered_after_two_failures_and_the_rest_is_learned() -> None:
    # Prepare: 10 good messages with the poison at offset 6
    messages = [message("poison" if o == 6 else f"d{o % 3}", o) for o in range(10)]
    # Execute
    core, letters, restarts = run_with_restarts(messages)
    # Assert: two restarts (chunk fails, then the message alone), one letter, everything else learned once
    assert restarts == 2
    assert [(d.reason, d.offset, d.device_id, d.original) for d in letters] == [
        ("learner_failed", 6, "poison", messages[6][0])
    ]
    assert dict(core.device_readings) == {"d0": 3, "d1": 3, "d2": 3}
    assert core.stats()["readings"] == 9 and core.stats()["dead_letters"] == 1
    assert core.offsets == {0: 9}


def test_two_poison_messages_in_one_chunk_each_cost_one_more_restart() -> None:
    messages = [message("poison" if o in (2, 7) else "good", o) for o in range(10)]
    core, letters, restarts = run_with_restarts(messages)
    assert restarts == 3
    assert [(d.reason, d.offset) for d in letters] == [("learner_failed", 2), ("learner_failed", 7)]
    assert core.device_readings == {"good": 8}


def test_nothing_is_registered_for_a_checkpoint_when_the_learner_raises() -> None:
    # Prepare: a core that learned one message of device a
    core = PoisonedCore(SETTINGS, Signer.generate())
    core.restore(0, None)
    core.on_readings([message("a", 0)])
    core.checkpoint()
    # Execute: a batch with a new good device b, a bad record and the poison
    with pytest.raises(RuntimeError):
        core.on_readings([message("b", 1), (b'{"v":1,"device_id":"c","x":[1]', 0, 2), message("poison", 3)])
    # Assert: b is not registered, the offset did not move, and a checkpoint still works
    assert dict(core.device_readings) == {"a": 1} and core.partition_of == {"a": 0}
    assert core.offsets == {0: 0} and core.dirty_partitions() == set()
    core.on_readings([message("a", 4)])
    [taken] = core.checkpoint()
    assert (taken.partition, taken.offset, [n for _, _, _, n in taken.chunks]) == (0, 4, [1])  # a alone


def test_ledger_cuts_isolates_and_forgets() -> None:
    # Prepare
    ledger = SuspectLedger(limit=3)
    msgs = [(b"", p, o) for p, o in [(0, 1), (1, 1), (0, 2), (0, 3)]]
    # Execute
    changed = ledger.failed(msgs)
    once = [[(m[1], m[2]) for m in piece] for piece in ledger.pieces([*msgs, (b"", 0, 4)])]
    ledger.failed([(b"", 0, 2)])
    ledger.failed([(b"", 0, 2)])
    # Assert
    assert changed == {0: [Suspect(1, 3, 1)], 1: [Suspect(1, 1, 1)]}
    assert once == [[(0, 1)], [(1, 1)], [(0, 2)], [(0, 3)], [(0, 4)]]
    assert [ledger.attempts(0, o) for o in range(5)] == [0, 1, 3, 1, 0]
    assert [ledger.refused(0, o) for o in range(5)] == [False, False, True, False, False]
    ledger.load(0, ledger.of(0), after=2)  # a checkpoint past offset 2: only ranges beyond it matter
    assert ledger.of(0) == [Suspect(1, 3, 1)]
    ledger.forget([0, 1])
    assert ledger.of(0) == [] and ledger.of(1) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"junk",
        b"[]",
        b'{"v":2}',
        b'{"v":1,"partition":-1,"suspects":[]}',
        b'{"v":1,"partition":0,"suspects":[[1,2]]}',
    ],
)
def test_a_record_that_is_not_a_suspects_list_is_refused(raw: bytes) -> None:
    with pytest.raises(SuspectError):
        decode_suspects(raw)


def test_suspects_round_trip() -> None:
    suspects = [Suspect(0, 4, 1), Suspect(3, 3, 2)]
    assert decode_suspects(encode_suspects(5, suspects)) == (5, suspects)
