"""Handshake and frame ciphers: bytes in, bytes out (docs/protocol.md §handshake, §frames)."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from sync.errors import DecryptFailed, HandshakeFailed, LocalProtocolError
from sync.handshake import MESSAGE_BYTES, Handshake, NoiseState, Session

SECRET = bytes(range(32))
PROLOGUE = b"hello-i hello-r"

# Published vector: mcginty/snow tests/vectors/snow.txt,
# "Noise_XXpsk0+psk1+psk2+psk3_25519_ChaChaPoly_BLAKE2b". Same tokens, psk0 and suite
# as ours, plus psk1..3, so it checks every step Potluck's handshake takes.
V_NAME = b"Noise_XXpsk0+psk1+psk2+psk3_25519_ChaChaPoly_BLAKE2b"
V_PATTERN = (("psk", "e", "psk"), ("e", "ee", "s", "es", "psk"), ("s", "se", "psk"))
V_PROLOGUE = (
    "5468657265206973206e6f20726967687420616e642077726f6e672e205468657265"
    "2773206f6e6c792066756e20616e6420626f72696e672e"
)
V_PSKS = [
    "c920e3475b8796f40cae28e04f4d5ef5b53ffb069fe1c154c37620b0dd10e65c",
    "f0658a53ace887cef0414551a0c238e4f6fdd00ca9849e8ac24783f4a1e33f01",
    "99853dbc4f0c81f4a5793995f87a6e0831133c47ea2fc654587c595c1c11b0d3",
    "bfdaf54333da3d48f2a8ca04a91b922f1e916b30780d5684c5c408c7c7e28664",
]
V_INIT_STATIC = "88e345952de60adbdf136155184aad057814a7459c9bc266c6c67048cae8b65b"
V_INIT_EPHEMERAL = "43b28303b8d579959f64f69c3066c92f61d2fa5c04f33bc0f20f4bcf9f7d4548"
V_RESP_STATIC = "d78263f5c670b63918d42ffb7b66907f86df2854a3e9a61d1199a9329f47cecf"
V_RESP_EPHEMERAL = "2f959bfe7f093fc18181dd0066dd0535b0272800a39f6a1962bef664bee373cb"
V_MESSAGES = [  # (payload, ciphertext); three handshake messages, then transport
    (
        "7892c7e5bd999a111a327eef8bc1cee18d94085d3abcfade30237978f3c429d3",
        (
            "8c8248dbaee325b29aacd2e7b3dc2b984021ed61a9d4a74341486e6aa1ddf8544d6ef3e45ad6f6a5"
            "4b03e5aa883f684f8859295bf15bb53f243cde9c0672f11ccdff162f6ff47b5b50bd9325cad4dd4d"
        ),
    ),
    (
        "85806d7aec9f3ccd2b37acebef885d31333e62afeac2071bb180db953d44be62",
        (
            "1e9299fe00fe7cd0d3fc0cc5eb75ca1aa8c3b740122a0010493d9516a517972d922925f2f1c0d6d2"
            "7a378b3972922b52c1914d41891db4dc3e9a664d8177ba896efb3807a01bb993bde4f05a8031e9a6"
            "a847fbc4f650a46508d29e3d69fc770267698c625a7c559ce0519853eb1775c6e5d096192363de55"
            "47c6e0844e0ab6b2"
        ),
    ),
    (
        "10ec396f7833a1b353056f7d2bfbedf8709e4bb08707fc1c5cd457d91476be15",
        (
            "62802109a09aef83b2c72b79043cf4209d72d09ad305885beb3686dabe721e43b5d46212160a747f"
            "273408d25ea8ad4598f61f80c9014473bbce785f38d4dd41deb7b6cdba80f8865cd29acdc179eeec"
            "da234485aa07d2fbb2e99468df840d00"
        ),
    ),
    (
        "ebb97bcf7f31ec5b6de10344d530a9a5035a45702e09708480fd2562f61dc668",
        (
            "1462943efb0d2eeaee4910647f376368d7fb81b875deb554a7dd5dfa9ebe22d539bb4342060899d0"
            "5399f9253a368e70"
        ),
    ),
    (
        "2f798482b591fa0411892e3065035c8b89abf294b15f3cf2c49ffdce57d49688",
        (
            "755615221793fca9eab630a378c497e4f0f7274221dc874c8cebd6c79efb14e75729f380f2c5fe15"
            "44d2e3e30b56e7c6"
        ),
    ),
]


def pair(
    *,
    secret_i: bytes = SECRET,
    secret_r: bytes = SECRET,
    prologue_i: bytes = PROLOGUE,
    prologue_r: bytes = PROLOGUE,
) -> tuple[Handshake, Handshake, SigningKey, SigningKey]:
    key_i, key_r = SigningKey.generate(), SigningKey.generate()
    initiator = Handshake(
        initiator=True, device_key=key_i, group_secret=secret_i, prologue=prologue_i
    )
    responder = Handshake(
        initiator=False, device_key=key_r, group_secret=secret_r, prologue=prologue_r
    )
    return initiator, responder, key_i, key_r


def run(initiator: Handshake, responder: Handshake) -> tuple[Session, Session]:
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    message3 = initiator.receive(message2)
    assert message3 is not None
    assert responder.receive(message3) is None
    assert initiator.session is not None and responder.session is not None
    return initiator.session, responder.session


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_noise_engine_matches_published_test_vector() -> None:
    h = bytes.fromhex
    psks = [h(psk) for psk in V_PSKS]
    initiator = NoiseState(
        name=V_NAME,
        pattern=V_PATTERN,
        initiator=True,
        prologue=h(V_PROLOGUE),
        static=h(V_INIT_STATIC),
        psks=psks,
        ephemeral=h(V_INIT_EPHEMERAL),
    )
    responder = NoiseState(
        name=V_NAME,
        pattern=V_PATTERN,
        initiator=False,
        prologue=h(V_PROLOGUE),
        static=h(V_RESP_STATIC),
        psks=psks,
        ephemeral=h(V_RESP_EPHEMERAL),
    )
    messages = [(h(payload), h(ciphertext)) for payload, ciphertext in V_MESSAGES]
    for index, (payload, ciphertext) in enumerate(messages[:3]):
        sender, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        assert sender.write_message(payload) == ciphertext
        assert reader.read_message(ciphertext) == payload
    assert initiator.finished and responder.finished
    i_to_r, r_to_i = initiator.split()
    assert r_to_i.encrypt(messages[3][0]) == messages[3][1]
    assert i_to_r.encrypt(messages[4][0]) == messages[4][1]


def test_handshake_gives_each_side_the_peer_key_and_mirrored_ciphers() -> None:
    initiator, responder, key_i, key_r = pair()
    session_i, session_r = run(initiator, responder)
    assert session_i.peer_key == bytes(key_r.verify_key)
    assert session_r.peer_key == bytes(key_i.verify_key)
    assert session_i.handshake_hash == session_r.handshake_hash
    assert session_r.receive.decrypt(session_i.send.encrypt(b"to responder")) == b"to responder"
    assert session_i.receive.decrypt(session_r.send.encrypt(b"to initiator")) == b"to initiator"


def test_handshake_messages_have_the_documented_sizes() -> None:
    initiator, responder, _, _ = pair()
    message1 = initiator.start()
    message2 = responder.receive(message1)
    assert message2 is not None
    message3 = initiator.receive(message2)
    assert message3 is not None
    assert (len(message1), len(message2), len(message3)) == MESSAGE_BYTES == (48, 192, 160)


def test_message_1_reveals_no_device_key() -> None:
    initiator, _, key_i, _ = pair()
    message1 = initiator.start()
    assert bytes(key_i.verify_key) not in message1
    assert bytes(key_i.verify_key.to_curve25519_public_key()) not in message1


def test_responder_refuses_message_1_from_a_stranger_without_the_group_secret() -> None:
    stranger, responder, _, _ = pair(secret_i=bytes(32))
    with pytest.raises(HandshakeFailed):
        responder.receive(stranger.start())
    assert responder.session is None


def test_initiator_refuses_message_2_from_a_stranger_without_the_group_secret() -> None:
    initiator, stranger, _, _ = pair(secret_r=bytes(32))
    message1 = initiator.start()
    # The stranger cannot authenticate message 1, so it cannot answer; whatever it sends
    # in the shape of message 2 is refused.
    with pytest.raises(HandshakeFailed):
        stranger.receive(message1)
    with pytest.raises(HandshakeFailed):
        initiator.receive(bytes(MESSAGE_BYTES[1]))


def test_different_prologues_fail_the_handshake() -> None:
    initiator, responder, _, _ = pair(prologue_r=b"a downgraded hello")
    with pytest.raises(HandshakeFailed):
        responder.receive(initiator.start())


@pytest.mark.parametrize("index", [0, 31, 32, 80, 100, 191])
def test_altered_message_2_fails(index: int) -> None:
    initiator, responder, _, _ = pair()
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    with pytest.raises(HandshakeFailed):
        initiator.receive(flip(message2, index))


@pytest.mark.parametrize("index", [0, 47, 48, 100, 159])
def test_altered_message_3_fails(index: int) -> None:
    initiator, responder, _, _ = pair()
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    message3 = initiator.receive(message2)
    assert message3 is not None
    with pytest.raises(HandshakeFailed):
        responder.receive(flip(message3, index))


def test_low_order_ephemeral_key_fails_cleanly() -> None:
    initiator, _, _, _ = pair()
    initiator.start()
    with pytest.raises(HandshakeFailed):
        initiator.receive(bytes(MESSAGE_BYTES[1]))  # e = 0: a low-order point


def test_key_proof_from_another_device_than_the_noise_static_key_fails() -> None:
    initiator, responder, _, _ = pair()
    # The responder's Noise static key stays its own, but it signs as another device.
    responder._device_key = SigningKey.generate()
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    with pytest.raises(HandshakeFailed, match="static key"):
        initiator.receive(message2)


def test_wrong_length_messages_fail() -> None:
    initiator, responder, _, _ = pair()
    with pytest.raises(HandshakeFailed):
        responder.receive(initiator.start() + b"\x00")


def test_handshake_steps_out_of_order_are_local_errors() -> None:
    initiator, responder, _, _ = pair()
    with pytest.raises(LocalProtocolError):
        responder.start()
    with pytest.raises(LocalProtocolError):
        initiator.receive(bytes(MESSAGE_BYTES[1]))
    with pytest.raises(LocalProtocolError):
        Handshake(
            initiator=True, device_key=SigningKey.generate(), group_secret=b"short", prologue=b""
        )


def test_frame_cipher_refuses_replayed_reordered_and_altered_frames() -> None:
    session_i, session_r = run(*pair()[:2])
    first, second = session_i.send.encrypt(b"one"), session_i.send.encrypt(b"two")
    with pytest.raises(DecryptFailed):
        session_r.receive.decrypt(second)  # reordered
    assert session_r.receive.decrypt(first) == b"one"
    with pytest.raises(DecryptFailed):
        session_r.receive.decrypt(first)  # replayed
    with pytest.raises(DecryptFailed):
        session_r.receive.decrypt(flip(second, 0))  # altered
    assert session_r.receive.decrypt(second) == b"two"
    assert session_r.receive.nonce == 2
