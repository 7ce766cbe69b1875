"""Mutual authentication and session keys: Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b.

Why Noise XX with the group secret as psk0 (docs/protocol.md §handshake): neither side
knows the other's device key in advance, and a stranger must learn nothing. With the
pre-shared key mixed in *before* the first message, message 1 already carries an AEAD
tag that only a holder of the group secret can produce, and every static key travels
encrypted under keys that depend on the group secret. A stranger who dials us fails at
message 1; a stranger we dial cannot read message 1 nor write message 2. No group hint
is sent at all: a stable hint would let anyone on the Wi-Fi follow a group around.

Device keys: the Noise static key is the X25519 form of the device's Ed25519 key
(libsodium's ed25519 -> curve25519 conversion), so there is no second long-term key to
store. Each side's payload is its Ed25519 public key and an Ed25519 signature over the
handshake hash at that point, prefixed by a role label; the reader checks the signature
*and* that the key converts to the static key Noise authenticated. So the peer key we
report is proven by the DH and by a signature bound to this very session.

Credentials (protocol version 3): after its key proof, each side's payload may carry a
*credential*, its own ``member.joined`` event, so that a member whose join no peer has
seen yet is known on its first sync (docs/protocol.md §members). The credential is
encrypted like the proof and covered by the handshake hash; what it says is the
state machine's to check (sync/protocol.py), not the handshake's.

Primitives: X25519, ChaCha20-Poly1305 (IETF) and Ed25519 from libsodium via PyNaCl;
BLAKE2b-512 and RFC 2104 HMAC from Python's hashlib/hmac (the same BLAKE2b as
libsodium's crypto_generichash). The Noise engine below follows the specification
(revision 34, §5) token by token and is checked against published test vectors.

Pure: bytes in, bytes out. ``Handshake`` is driven by sync/protocol.py.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from sync.errors import DecryptFailed, HandshakeFailed, LocalProtocolError

NOISE_NAME = b"Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
XXPSK0: tuple[tuple[str, ...], ...] = (("psk", "e"), ("e", "ee", "s", "es"), ("s", "se"))

DH_BYTES = 32
HASH_BYTES = 64
KEY_BYTES = 32
TAG_BYTES = 16
SECRET_BYTES = 32
MAX_NONCE = (1 << 64) - 1  # reserved by Noise §5.1: never used

# Signed by each side over the handshake hash (docs/protocol.md §handshake).
RESPONDER_LABEL = b"potluck-sync/1 responder"
INITIATOR_LABEL = b"potluck-sync/1 initiator"
PAYLOAD_BYTES = 32 + 64  # Ed25519 public key || signature

# Exact sizes of the three messages: e+tag; e+enc(s)+enc(payload); enc(s)+enc(payload).
MESSAGE_BYTES = (
    DH_BYTES + TAG_BYTES,
    DH_BYTES + (DH_BYTES + TAG_BYTES) + (PAYLOAD_BYTES + TAG_BYTES),
    (DH_BYTES + TAG_BYTES) + (PAYLOAD_BYTES + TAG_BYTES),
)


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """Noise §4.3 HKDF with HMAC-BLAKE2b."""
    temp = hmac.new(chaining_key, ikm, hashlib.blake2b).digest()
    out: list[bytes] = []
    previous = b""
    for i in range(1, outputs + 1):
        previous = hmac.new(temp, previous + bytes([i]), hashlib.blake2b).digest()
        out.append(previous)
    return out


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return crypto_scalarmult(private, public)
    except (CryptoError, RuntimeError, ValueError, TypeError):
        # libsodium refuses low-order points (an all-zero shared secret).
        raise HandshakeFailed("peer sent an invalid Curve25519 key") from None


class CipherState:
    """Noise CipherState: one key and a 64-bit nonce counter, one direction.

    The nonce is never sent: both sides count, so a replayed, dropped or reordered
    ciphertext fails to decrypt (docs/protocol.md §frames).
    """

    __slots__ = ("_key", "_nonce")

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key
        self._nonce = 0

    @property
    def has_key(self) -> bool:
        return self._key is not None

    @property
    def nonce(self) -> int:
        """The nonce the next encrypt or decrypt uses."""
        return self._nonce

    def _nonce_bytes(self) -> bytes:
        if self._nonce >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted: open a new connection")
        return b"\x00\x00\x00\x00" + self._nonce.to_bytes(8, "little")

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        if self._key is None:
            return plaintext
        out = crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad, self._nonce_bytes(), self._key
        )
        self._nonce += 1
        return out

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """Raise DecryptFailed unless ``ciphertext`` is the next frame under this key."""
        if self._key is None:
            return ciphertext
        try:
            out = crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, self._nonce_bytes(), self._key
            )
        except (CryptoError, ValueError, TypeError):
            raise DecryptFailed(
                f"frame {self._nonce} does not authenticate "
                "(altered, replayed, reordered or under another key)"
            ) from None
        self._nonce += 1
        return out


class _SymmetricState:
    """Noise §5.2: chaining key, handshake hash, and the current cipher."""

    def __init__(self, name: bytes) -> None:
        self.h = name.ljust(HASH_BYTES, b"\x00") if len(name) <= HASH_BYTES else _hash(name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:KEY_BYTES])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:KEY_BYTES])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(plaintext, self.h)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        try:
            plaintext = self.cipher.decrypt(ciphertext, self.h)
        except DecryptFailed:
            raise HandshakeFailed(
                "handshake message does not authenticate: the peer "
                "does not hold this group's secret, or it was altered"
            ) from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf(self.ck, b"", 2)
        return CipherState(k1[:KEY_BYTES]), CipherState(k2[:KEY_BYTES])


class NoiseState:
    """Noise §5.3 HandshakeState for any pattern of e, s, ee, es, se, ss, psk tokens.

    Potluck uses only XXPSK0; the engine is general so that published test vectors of
    neighbouring patterns can check it. Each message is processed in two halves
    (tokens, then payload) so that a signature can cover the handshake hash in between.
    """

    def __init__(
        self,
        *,
        name: bytes,
        pattern: Sequence[Sequence[str]],
        initiator: bool,
        prologue: bytes,
        static: bytes | None = None,
        psks: Sequence[bytes] = (),
        ephemeral: bytes | None = None,
    ) -> None:
        self._pattern = [tuple(tokens) for tokens in pattern]
        self._psk_mode = any("psk" in tokens for tokens in self._pattern)
        self._initiator = initiator
        self._ss = _SymmetricState(name)
        self._ss.mix_hash(prologue)
        self._s = static
        self._s_pub = crypto_scalarmult_base(static) if static is not None else None
        self._e = ephemeral
        self._psks = list(psks)
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        self._index = 0

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    @property
    def finished(self) -> bool:
        return self._index >= len(self._pattern)

    def write_message(self, payload: bytes) -> bytes:
        return self.write_tokens() + self.write_payload(payload)

    def read_message(self, message: bytes) -> bytes:
        return self.read_payload(self.read_tokens(message))

    def write_tokens(self) -> bytes:
        out = bytearray()
        for token in self._pattern[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = bytes(PrivateKey.generate())
                e_pub = crypto_scalarmult_base(self._e)
                out += e_pub
                self._mix_ephemeral(e_pub)
            elif token == "s":
                out += self._ss.encrypt_and_hash(self._need(self._s_pub))
            else:
                self._mix_token(token)
        return bytes(out)

    def write_payload(self, payload: bytes) -> bytes:
        self._index += 1
        return self._ss.encrypt_and_hash(payload)

    def read_tokens(self, message: bytes) -> bytes:
        """Process this message's tokens; return the rest (the encrypted payload)."""
        rest = message
        for token in self._pattern[self._index]:
            if token == "e":
                if len(rest) < DH_BYTES:
                    raise HandshakeFailed("handshake message too short")
                self._re, rest = rest[:DH_BYTES], rest[DH_BYTES:]
                self._mix_ephemeral(self._re)
            elif token == "s":
                size = DH_BYTES + (TAG_BYTES if self._ss.cipher.has_key else 0)
                if len(rest) < size:
                    raise HandshakeFailed("handshake message too short")
                self.remote_static = self._ss.decrypt_and_hash(rest[:size])
                rest = rest[size:]
            else:
                self._mix_token(token)
        return rest

    def read_payload(self, ciphertext: bytes) -> bytes:
        self._index += 1
        return self._ss.decrypt_and_hash(ciphertext)

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator-to-responder, responder-to-initiator) ciphers; Noise §5.2 Split."""
        if not self.finished:
            raise LocalProtocolError("split() before the handshake finished")
        return self._ss.split()

    def _mix_ephemeral(self, e_pub: bytes) -> None:
        self._ss.mix_hash(e_pub)
        if self._psk_mode:
            self._ss.mix_key(e_pub)

    def _mix_token(self, token: str) -> None:
        if token == "psk":
            if not self._psks:
                raise LocalProtocolError("pattern needs more pre-shared keys")
            self._ss.mix_key_and_hash(self._psks.pop(0))
            return
        # First letter is the initiator's key, second the responder's (Noise §7.1).
        mine, theirs = (token[0], token[1]) if self._initiator else (token[1], token[0])
        private = self._need(self._e if mine == "e" else self._s)
        public = self._need(self._re if theirs == "e" else self.remote_static)
        self._ss.mix_key(_dh(private, public))

    @staticmethod
    def _need(key: bytes | None) -> bytes:
        if key is None:
            raise LocalProtocolError("pattern uses a key this side does not have")
        return key


@dataclass(frozen=True, slots=True)
class Session:
    """What a finished handshake yields: the peer's device key and the frame ciphers,
    and the credential the peer presented (empty when none)."""

    peer_key: bytes
    send: CipherState
    receive: CipherState
    handshake_hash: bytes
    peer_credential: bytes = b""


class Handshake:
    """One side of Potluck's handshake: XXpsk0 plus device-key signatures.

    Initiator: ``start()`` gives message 1; ``receive(message 2)`` gives message 3.
    Responder: ``receive(message 1)`` gives message 2; ``receive(message 3)`` gives None.
    After the last step ``session`` is set. Any failure raises HandshakeFailed; the
    object is then useless. ``prologue`` must be byte-identical on both sides.
    ``credential``: None for the fixed-size payloads of versions 1 and 2; else bytes
    (maybe empty) sent after our key proof, and the peer's may follow its own.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        device_key: SigningKey,
        group_secret: bytes,
        prologue: bytes,
        ephemeral: bytes | None = None,
        credential: bytes | None = None,
    ) -> None:
        if len(group_secret) != SECRET_BYTES:
            raise LocalProtocolError(f"group secret must be {SECRET_BYTES} bytes")
        self._initiator = initiator
        self._credential = credential
        self._device_key = device_key
        self._noise = NoiseState(
            name=NOISE_NAME,
            pattern=XXPSK0,
            initiator=initiator,
            prologue=prologue,
            static=bytes(device_key.to_curve25519_private_key()),
            psks=[group_secret],
            ephemeral=ephemeral,
        )
        self._step = 0
        self.session: Session | None = None

    def start(self) -> bytes:
        """Initiator only: message 1 (our ephemeral key and an empty, sealed payload)."""
        if not self._initiator or self._step != 0:
            raise LocalProtocolError("start() is the initiator's first step")
        self._step = 1
        return self._noise.write_message(b"")

    def receive(self, message: bytes) -> bytes | None:
        """Consume the peer's next message; return our reply, if the pattern has one."""
        # (initiator?, step) -> index of the message we expect; 0 and 2 come from the initiator.
        expected = {(True, 1): 1, (False, 0): 0, (False, 2): 2}.get((self._initiator, self._step))
        if expected is None:
            raise LocalProtocolError("no handshake message expected now")
        size = MESSAGE_BYTES[expected]
        if len(message) != size and not (
            self._credential is not None and expected > 0 and len(message) > size
        ):
            raise HandshakeFailed(
                f"handshake message {expected + 1} is {len(message)} bytes, "
                f"expected {MESSAGE_BYTES[expected]}"
            )
        rest = self._noise.read_tokens(message)
        transcript = self._noise.handshake_hash
        payload = self._noise.read_payload(rest)
        if expected == 0:
            if payload:
                raise HandshakeFailed("message 1 must carry an empty payload")
            self._step = 2
            return self._write_signed(RESPONDER_LABEL)
        label = INITIATOR_LABEL if expected == 2 else RESPONDER_LABEL
        peer_key = self._check_payload(payload[:PAYLOAD_BYTES], transcript, label)
        reply = self._write_signed(INITIATOR_LABEL) if self._initiator else None
        i_to_r, r_to_i = self._noise.split()
        send, receive = (i_to_r, r_to_i) if self._initiator else (r_to_i, i_to_r)
        self.session = Session(
            peer_key, send, receive, self._noise.handshake_hash, payload[PAYLOAD_BYTES:]
        )
        self._step = 3
        return reply

    def _write_signed(self, label: bytes) -> bytes:
        tokens = self._noise.write_tokens()
        signature = self._device_key.sign(label + self._noise.handshake_hash).signature
        payload = bytes(self._device_key.verify_key) + signature + (self._credential or b"")
        return tokens + self._noise.write_payload(payload)

    def _check_payload(self, payload: bytes, transcript: bytes, label: bytes) -> bytes:
        """Return the peer's Ed25519 key once it is proven for this session."""
        if len(payload) != PAYLOAD_BYTES:
            raise HandshakeFailed("key proof has the wrong size")
        peer_key, signature = payload[:32], payload[32:]
        try:
            verify_key = VerifyKey(peer_key)
            verify_key.verify(label + transcript, signature)
            converted = bytes(verify_key.to_curve25519_public_key())
        except (BadSignatureError, CryptoError, RuntimeError, ValueError, TypeError):
            raise HandshakeFailed("peer's device key signature does not verify") from None
        if not hmac.compare_digest(converted, self._noise.remote_static or b""):
            raise HandshakeFailed("peer's device key does not match its Noise static key")
        return peer_key
