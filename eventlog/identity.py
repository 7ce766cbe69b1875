"""Who this node is and which group it belongs to.

A *device key* (Ed25519) signs every event the node writes; its public half is the
``author`` of those events. A *group* is a 32-byte random id, a 32-byte random secret and
a readable name. Knowing the secret is what makes someone a member: it opens sync
sessions (docs/protocol.md) and it makes the *membership proof* that an author's first
event (``member.joined``) must carry, so a stranger's key cannot write into the log even
through a relay.

Files (docs/architecture.md §data-dir), written with mode 0600 and atomically
(write to a temporary file, fsync, rename):
    device.key   the 32-byte Ed25519 seed
    group.bin    msgpack {"id", "secret", "name"}
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgpack
from nacl.signing import SigningKey

from eventlog.errors import UsageError

GROUP_ID_BYTES = 32
GROUP_SECRET_BYTES = 32
DEVICE_KEY_FILE = "device.key"
GROUP_FILE = "group.bin"
_PROOF_CONTEXT = b"potluck member proof v1"


@dataclass(frozen=True, slots=True)
class Group:
    id: bytes
    secret: bytes
    name: str

    @classmethod
    def new(cls, name: str) -> Group:
        return cls.from_secret(secrets.token_bytes(GROUP_SECRET_BYTES), name)

    @classmethod
    def from_secret(cls, secret: bytes, name: str) -> Group:
        """The group whose secret is ``secret``: its id is derived, so an invite
        need only carry the secret (decision 0006)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise UsageError("group name must be 1 to 100 characters")
        if len(secret) != GROUP_SECRET_BYTES:
            raise UsageError("a group secret is 32 bytes")
        return cls(group_id_of(secret), secret, name)


def group_id_of(secret: bytes) -> bytes:
    """The public group id: a one-way function of the secret."""
    return hashlib.blake2b(b"potluck group id v1", digest_size=GROUP_ID_BYTES, key=secret).digest()


def membership_proof(group: Group, author: bytes) -> bytes:
    """Keyed BLAKE2b of the author under the group secret: only members can make it."""
    return hashlib.blake2b(
        _PROOF_CONTEXT + group.id + author, digest_size=32, key=group.secret
    ).digest()


def check_membership_proof(group: Group, author: bytes, proof: object) -> bool:
    return isinstance(proof, bytes) and hmac.compare_digest(proof, membership_proof(group, author))


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` so that a crash leaves either the old file or the new, 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    replace_durably(tmp, path)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` and make the rename itself durable. Some file
    systems (USB sticks) refuse to fsync a directory; the file's data is on disk by then."""
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_device_key(data_dir: Path, key: SigningKey) -> None:
    write_private(data_dir / DEVICE_KEY_FILE, bytes(key))


def load_device_key(data_dir: Path) -> SigningKey:
    path = data_dir / DEVICE_KEY_FILE
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no Potluck node in {data_dir}: run 'potluck init' first") from None
    if len(seed) != 32:
        raise UsageError(f"{path} is damaged: expected a 32-byte key, found {len(seed)} bytes")
    return SigningKey(seed)


def save_group(data_dir: Path, group: Group) -> None:
    data = msgpack.packb(
        {"id": group.id, "secret": group.secret, "name": group.name}, use_bin_type=True
    )
    write_private(data_dir / GROUP_FILE, data)


def load_group(data_dir: Path) -> Group:
    path = data_dir / GROUP_FILE
    try:
        fields = msgpack.unpackb(path.read_bytes(), raw=False)
        group = Group(bytes(fields["id"]), bytes(fields["secret"]), str(fields["name"]))
    except FileNotFoundError:
        raise UsageError(f"no Potluck node in {data_dir}: run 'potluck init' first") from None
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        raise UsageError(f"{path} is damaged: it does not hold a group") from None
    if len(group.id) != GROUP_ID_BYTES or len(group.secret) != GROUP_SECRET_BYTES:
        raise UsageError(f"{path} is damaged: group id or secret has the wrong length")
    return group


def tighten(data_dir: Path) -> list[str]:
    """Make the data directory and every file in it readable by this user only (0700
    and 0600); return the names whose mode was loose.

    Why: the log holds the group's events in clear, and the key and group files hold
    what makes this node a member. A directory made by an older Potluck, restored from
    a backup or copied by hand can carry a loose mode that ``init`` never saw.
    A file system without Unix modes (a FAT USB stick) keeps its modes whatever is
    asked: that is left as it is, there is nothing to tighten. Raises UsageError when
    the mode is loose and cannot be changed (another user owns the directory).
    """
    loosened: list[str] = []
    try:
        entries = [data_dir, *(p for p in data_dir.iterdir() if p.is_file())]
    except OSError as exc:
        raise UsageError(f"cannot read {data_dir}: {exc.strerror or exc}") from None
    for path in entries:
        wanted = 0o700 if path == data_dir else 0o600
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                path.chmod(mode & wanted)
                loosened.append(path.name if path != data_dir else str(data_dir))
        except FileNotFoundError:  # a -wal or -shm file that SQLite just removed
            continue
        except PermissionError:
            raise UsageError(
                f"{path} can be read by other users of this computer and Potluck cannot "
                f"change that (it belongs to another user): as its owner, run "
                f"'chmod -R go-rwx {data_dir}', or use a data directory of your own"
            ) from None
    return loosened
