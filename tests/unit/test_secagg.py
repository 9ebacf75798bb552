"""Secure aggregation (edge/metastream_edge/secagg.py): exact sums, drop-outs, and what one vector hides."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from metastream_edge.secagg import (
    SCALE,
    AggregateResult,
    AggregatorRound,
    DeviceRound,
    FakeClock,
    LateMessage,
    MaskedInput,
    Phase,
    ProtocolError,
    RoundConfig,
    UnmaskRequest,
    dequantise,
    quantise,
)


@dataclass
class Fleet:
    """Seeded devices of one round, with their Δ and weights."""

    config: RoundConfig
    clock: FakeClock
    devices: dict[str, DeviceRound]
    server: AggregatorRound
    deltas: dict[str, np.ndarray]
    weights: dict[str, float]


def fleet(n: int, n_params: int, threshold: int, seed: int = 0) -> Fleet:
    config = RoundConfig("round-7", n_params=n_params, threshold=threshold, phase_timeout_s=5.0)
    clock = FakeClock(100.0)
    rng = np.random.default_rng(seed)
    ids = [f"dev-{i:02d}" for i in range(n)]
    devices = {}
    for i, d in enumerate(ids):
        key_rng = np.random.default_rng([seed, i])
        devices[d] = DeviceRound(d, config, random_bytes=lambda k, r=key_rng: r.bytes(k))
    deltas = {d: rng.normal(0.0, 0.1, n_params) for d in ids}
    weights = {d: float(rng.integers(1, 200)) for d in ids}
    return Fleet(config, clock, devices, AggregatorRound(config, ids, clock), deltas, weights)


def run(f: Fleet, drop_after_share: frozenset[str] | set[str] = frozenset()) -> AggregateResult | None:
    """One round; the devices in ``drop_after_share`` vanish once they have sent their shares."""
    ids = sorted(f.devices)
    for d in ids:
        f.server.receive_advert(f.devices[d].advertise())
    roster = f.server.step()
    for d in ids:
        f.server.receive_shares(d, f.devices[d].share_keys(roster))  # type: ignore[arg-type]
    inbox = f.server.step()
    assert isinstance(inbox, dict)
    alive = [d for d in ids if d not in drop_after_share]
    for d in alive:
        f.server.receive_masked(f.devices[d].masked_input(inbox[d], f.deltas[d], f.weights[d]))
    if drop_after_share:
        assert f.server.step() is None  # still waiting for the dropped ones
        f.clock.now += f.config.phase_timeout_s
    request = f.server.step()
    if not isinstance(request, UnmaskRequest):
        return None
    for d in alive:
        f.server.receive_unmask(f.devices[d].unmask(request))
    result = f.server.step()
    assert result is None or isinstance(result, AggregateResult)
    return result


def true_sums(f: Fleet, members: list[str]) -> tuple[np.ndarray, float]:
    weighted = np.sum([f.weights[d] * f.deltas[d] for d in members], axis=0)
    return weighted, sum(f.weights[d] for d in members)


def test_masks_cancel_and_the_sum_is_exact_up_to_quantisation() -> None:
    # Prepare: six devices, 200 parameters each, no drop-out.
    f = fleet(n=6, n_params=200, threshold=4)
    ids = sorted(f.devices)

    # Execute
    result = run(f)

    # Assert: the unmasked sum is exactly the sum of the quantised inputs (integers mod 2^64),
    # hence within n/(2·SCALE) of the float sum in every entry; the weight sum is exact.
    assert result is not None and f.server.phase is Phase.DONE
    quantised = [quantise(np.concatenate([f.weights[d] * f.deltas[d], [f.weights[d]]])) for d in ids]
    exact = dequantise(np.sum(quantised, axis=0, dtype=np.uint64))
    np.testing.assert_array_equal(result.weighted_sum, exact[:-1])
    weighted, total = true_sums(f, ids)
    assert result.total_weight == total
    assert np.max(np.abs(result.weighted_sum - weighted)) <= len(ids) / (2 * SCALE)
    np.testing.assert_allclose(result.mean, weighted / total, rtol=0, atol=1e-6)
    assert result.survivors == tuple(ids) and result.dropped == ()


def test_a_device_that_vanishes_after_sharing_leaves_the_survivors_weighted_mean() -> None:
    # Prepare: five devices, threshold 3; dev-02 sends its shares, then no masked input.
    f = fleet(n=5, n_params=64, threshold=3, seed=1)
    gone = {"dev-02"}

    # Execute
    result = run(f, drop_after_share=gone)

    # Assert: its pairwise masks are rebuilt from its key's shares and removed.
    assert result is not None
    survivors = [d for d in sorted(f.devices) if d not in gone]
    weighted, total = true_sums(f, survivors)
    assert result.dropped == ("dev-02",) and list(result.survivors) == survivors
    assert result.total_weight == total
    np.testing.assert_allclose(result.mean, weighted / total, rtol=0, atol=1e-6)


def test_two_drop_outs_still_unmask_and_too_many_fail_the_round() -> None:
    # Prepare: two fleets of five with threshold 3.
    ok, too_many = fleet(n=5, n_params=16, threshold=3, seed=2), fleet(n=5, n_params=16, threshold=3, seed=2)

    # Execute
    result = run(ok, drop_after_share={"dev-00", "dev-04"})
    failed = run(too_many, drop_after_share={"dev-00", "dev-01", "dev-04"})

    # Assert
    assert result is not None
    weighted, total = true_sums(ok, ["dev-01", "dev-02", "dev-03"])
    np.testing.assert_allclose(result.mean, weighted / total, rtol=0, atol=1e-6)
    assert failed is None and too_many.server.phase is Phase.FAILED
    assert too_many.server.failure == "masked input: 2 devices; threshold 3"


def test_one_masked_vector_is_uncorrelated_with_its_delta() -> None:
    # Prepare: a round with 4096 parameters; Δ of dev-00 drawn from the seeded stream.
    f = fleet(n=3, n_params=4096, threshold=2, seed=3)
    ids = sorted(f.devices)
    for d in ids:
        f.server.receive_advert(f.devices[d].advertise())
    roster = f.server.step()
    for d in ids:
        f.server.receive_shares(d, f.devices[d].share_keys(roster))  # type: ignore[arg-type]
    inbox = f.server.step()
    assert isinstance(inbox, dict)

    # Execute: what the aggregator receives from dev-00, read as fixed-point numbers.
    masked = f.devices["dev-00"].masked_input(inbox["dev-00"], f.deltas["dev-00"], f.weights["dev-00"])
    seen = dequantise(masked.vector)[:-1]

    # Assert: the unmasked vector would correlate perfectly; the masked one has |corr| below
    # 5/sqrt(4096) (five standard errors of the correlation of independent vectors).
    truth = f.deltas["dev-00"]
    assert np.corrcoef(dequantise(quantise(f.weights["dev-00"] * truth)), truth)[0, 1] > 0.999999
    assert abs(np.corrcoef(seen, truth)[0, 1]) < 5 / np.sqrt(4096)
    # And its entries spread over the whole 64-bit range, not near the true values.
    assert np.median(np.abs(seen)) > 1e10


def test_phases_wait_until_complete_or_past_the_deadline() -> None:
    # Prepare
    f = fleet(n=3, n_params=4, threshold=2)
    f.server.receive_advert(f.devices["dev-00"].advertise())
    f.server.receive_advert(f.devices["dev-01"].advertise())

    # Execute / Assert: one device missing, deadline not reached → still open.
    f.clock.now += 4.9
    assert f.server.step() is None and f.server.phase is Phase.ADVERTISE
    f.clock.now += 0.1
    roster = f.server.step()
    assert roster is not None and roster.device_ids == ("dev-00", "dev-01")  # type: ignore[union-attr]
    with pytest.raises(LateMessage, match="advertise message from 'dev-02' while the round is in share"):
        f.server.receive_advert(f.devices["dev-02"].advertise())


def test_devices_refuse_requests_that_would_unmask_one_input() -> None:
    # Prepare: a round brought to the unmask phase with no drop-out.
    f = fleet(n=3, n_params=4, threshold=2)
    ids = sorted(f.devices)
    for d in ids:
        f.server.receive_advert(f.devices[d].advertise())
    roster = f.server.step()
    for d in ids:
        f.server.receive_shares(d, f.devices[d].share_keys(roster))  # type: ignore[arg-type]
    inbox = f.server.step()
    assert isinstance(inbox, dict)
    for d in ids:
        f.server.receive_masked(f.devices[d].masked_input(inbox[d], f.deltas[d], f.weights[d]))
    request = f.server.step()
    assert isinstance(request, UnmaskRequest)
    device = f.devices["dev-00"]

    # Execute / Assert: naming a survivor as dropped too (its seed AND key) is refused;
    # so is a second request after an honest answer.
    both = replace(request, dropped=("dev-01",))
    with pytest.raises(ProtocolError, match="both survivor and dropped"):
        device.unmask(both)
    device.unmask(request)
    with pytest.raises(ProtocolError, match="already answered"):
        device.unmask(replace(request, survivors=("dev-00", "dev-02"), dropped=("dev-01",)))


def test_a_tampered_share_and_a_malformed_input_are_refused() -> None:
    # Prepare
    f = fleet(n=3, n_params=4, threshold=2)
    ids = sorted(f.devices)
    for d in ids:
        f.server.receive_advert(f.devices[d].advertise())
    roster = f.server.step()
    for d in ids:
        f.server.receive_shares(d, f.devices[d].share_keys(roster))  # type: ignore[arg-type]
    inbox = f.server.step()
    assert isinstance(inbox, dict)
    share = inbox["dev-00"][0]
    tampered = replace(share, ciphertext=bytes([share.ciphertext[0] ^ 1]) + share.ciphertext[1:])

    # Execute / Assert
    with pytest.raises(ProtocolError, match="does not decrypt"):
        f.devices["dev-00"].masked_input([tampered], f.deltas["dev-00"], 1.0)
    with pytest.raises(ProtocolError, match="5 uint64 entries expected"):
        f.server.receive_masked(MaskedInput("dev-01", np.zeros(5, dtype=np.float64)))
    with pytest.raises(ValueError, match="beyond the secure-aggregation range"):
        f.devices["dev-01"].masked_input(inbox["dev-01"], np.full(4, 1e5), 100.0)


def test_a_roster_with_a_threshold_not_above_half_is_refused() -> None:
    # Prepare: threshold 2 of 4 would let two disjoint pairs of answers unmask one device.
    config = RoundConfig("r", n_params=2, threshold=2)
    ids = ["a", "b", "c", "d"]
    server = AggregatorRound(config, ids, FakeClock())

    # Execute
    for d in ids:
        server.receive_advert(DeviceRound(d, config).advertise())
    out = server.step()

    # Assert
    assert out is None and server.phase is Phase.FAILED
    assert server.failure == "advertise: 4 devices; threshold 2 needs between 2 and 3"


def test_every_message_survives_the_wire() -> None:
    # Prepare: one round's real messages, through to the result.
    from metastream_edge.secagg_wire import decode, encode

    f = fleet(n=3, n_params=5, threshold=2, seed=4)
    ids = sorted(f.devices)
    adverts = [f.devices[d].advertise() for d in ids]
    for a in adverts:
        f.server.receive_advert(a)
    roster = f.server.step()
    assert roster is not None
    shares = {d: f.devices[d].share_keys(roster) for d in ids}  # type: ignore[arg-type]
    for d in ids:
        f.server.receive_shares(d, shares[d])
    inbox = f.server.step()
    assert isinstance(inbox, dict)
    masked = [f.devices[d].masked_input(inbox[d], f.deltas[d], f.weights[d]) for d in ids]
    for m in masked:
        f.server.receive_masked(m)
    request = f.server.step()
    assert isinstance(request, UnmaskRequest)
    answers = [f.devices[d].unmask(request) for d in ids]
    for a in answers:
        f.server.receive_unmask(a)
    result = f.server.step()
    assert isinstance(result, AggregateResult)

    # Execute / Assert: each decodes to an equal message of the same round.
    for message in [*adverts, roster, shares["dev-00"], request, *answers]:
        assert decode(encode(message, "round-7")) == ("round-7", message)  # type: ignore[arg-type]
    for m in masked:
        round_id, back = decode(encode(m, "round-7"))
        assert round_id == "round-7" and isinstance(back, MaskedInput)
        np.testing.assert_array_equal(back.vector, m.vector)
    _, back_result = decode(encode(result, "round-7"))
    assert isinstance(back_result, AggregateResult)
    np.testing.assert_array_equal(back_result.mean, result.mean)
    assert back_result.total_weight == result.total_weight
    with pytest.raises(ProtocolError, match="unknown secure-aggregation message type 'nope'"):
        decode(b'{"type": "nope", "round_id": "r"}')
    with pytest.raises(ProtocolError, match="not a secure-aggregation message"):
        decode(b"\xff")


def test_a_wrong_key_share_fails_the_round_with_the_reason() -> None:
    # Prepare: dev-02 drops after sharing; one survivor's answer carries a corrupted share of its key.
    f = fleet(n=3, n_params=4, threshold=2, seed=5)
    ids = sorted(f.devices)
    for d in ids:
        f.server.receive_advert(f.devices[d].advertise())
    roster = f.server.step()
    for d in ids:
        f.server.receive_shares(d, f.devices[d].share_keys(roster))  # type: ignore[arg-type]
    inbox = f.server.step()
    assert isinstance(inbox, dict)
    for d in ("dev-00", "dev-01"):
        f.server.receive_masked(f.devices[d].masked_input(inbox[d], f.deltas[d], f.weights[d]))
    f.clock.now += f.config.phase_timeout_s
    request = f.server.step()
    assert isinstance(request, UnmaskRequest) and request.dropped == ("dev-02",)
    good = f.devices["dev-00"].unmask(request)
    honest = f.devices["dev-01"].unmask(request)
    index, share = honest.key_shares["dev-02"]
    bad = replace(honest, key_shares={"dev-02": (index, bytes(len(share)))})

    # Execute
    f.server.receive_unmask(good)
    f.server.receive_unmask(bad)
    out = f.server.step()

    # Assert
    assert out is None and f.server.phase is Phase.FAILED
    assert (
        f.server.failure == "unmask: the shares of 'dev-02''s mask key do not rebuild the key it advertised"
    )
