"""Ed25519-signed envelopes for model payloads (and θ): :mod:`metastream_edge.signing`.

One implementation serves workers and devices; this name stays for the worker's imports.
"""

from metastream_edge.signing import MAGIC, SignatureError, Signer, Verifier, key_id

__all__ = ["MAGIC", "SignatureError", "Signer", "Verifier", "key_id"]
