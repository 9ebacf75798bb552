"""The one owner of a worker's θ: each θ message from the meta topic is verified and decoded once.

The worker's fleet and the meta aggregator both need every θ version (the
fleet to restart devices from it, the aggregator to continue from the newest
one when the deltas partition moves to this worker).  :class:`ThetaOwner`
opens a message once, keeps the newest θ and its version, and hands the
decoded θ to each follower (anything with ``adopt_theta(theta, version)``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from connectors.signing import SignatureError, Verifier
from learners.nets import Params
from metastream_edge.state import META_KEY
from wire.models import CodecError, decode_model

log = logging.getLogger(__name__)


class ThetaFollower(Protocol):
    """Something that takes θ versions: a :class:`~learners.fleet.FleetLearner`, the meta aggregator."""

    def adopt_theta(self, theta: Params, version: int) -> bool:
        """Use ``theta`` if ``version`` is newer than the follower's own; returns whether it did."""
        ...


class ThetaOwner:
    """Holds the current θ and its version; opens each θ message once and feeds the followers.

    Parameters
    ----------
    verifier
        Keys a θ message must be signed with.
    theta
        θ₀, version 0 (the fleet's own, so it is built once).
    followers
        Fed every θ newer than the owner's, in order.

    Examples
    --------
    >>> from connectors.signing import Signer
    >>> from wire.models import ModelHeader, encode_model
    >>> from learners.config import LearnerConfig
    >>> from learners.nets import init_params
    >>> theta0 = init_params(LearnerConfig(n_features=1, hidden=(2,)))
    >>> signer = Signer.generate()
    >>> class Follower:
    ...     version = 0
    ...     def adopt_theta(self, theta, version):
    ...         self.version = version
    ...         return True
    >>> follower = Follower()
    >>> owner = ThetaOwner(Verifier([signer.public_key]), theta0, [follower])
    >>> header = ModelHeader(META_KEY, 3, 2, "regression", 1, 1, (2,))
    >>> message = signer.seal(encode_model(theta0, header))
    >>> owner.receive(message), owner.version, follower.version, owner.opened
    (True, 3, 3, 1)
    >>> owner.receive(message), owner.receive(b"junk"), owner.refused  # old, then unsigned
    (False, False, 1)
    """

    def __init__(self, verifier: Verifier, theta: Params, followers: Iterable[ThetaFollower] = ()) -> None:
        self.verifier = verifier
        self._theta = theta
        self._version = 0
        self.followers: list[ThetaFollower] = list(followers)
        self.opened = 0
        """θ messages verified and decoded (each exactly once)."""
        self.refused = 0
        """θ messages whose signature or payload was bad."""

    @property
    def theta(self) -> Params:
        """The newest θ read from the meta topic, θ₀ before any (do not modify in place).

        A worker restored from a checkpoint may hold a newer θ in its fleet
        until the meta topic catches up; the fleet refuses older versions.
        """
        return self._theta

    @property
    def version(self) -> int:
        """Version of :attr:`theta` (0: θ₀)."""
        return self._version

    def receive(self, value: bytes, also: Iterable[ThetaFollower] = ()) -> bool:
        """Open one θ message; a newer θ goes to every follower (and to ``also``).

        Returns whether a follower adopted θ.  A message that is not
        signed by a trusted key, or does not decode, is counted in
        :attr:`refused` and logged; one for another key than
        :data:`META_KEY` is ignored.
        """
        try:
            tensors, header = decode_model(self.verifier.open(value))
        except (SignatureError, CodecError) as exc:
            log.warning("ignoring θ message: %s", exc)
            self.refused += 1
            return False
        finally:
            self.opened += 1
        if header.device_id != META_KEY or header.model_version <= self._version:
            return False
        self._theta, self._version = tensors, header.model_version
        adopted = [f.adopt_theta(tensors, header.model_version) for f in (*self.followers, *also)]
        return any(adopted)


__all__ = ["ThetaFollower", "ThetaOwner"]
