"""CURVE keys and the rule for endpoints that leave the machine (docs/security.md).

ZeroMQ's CURVE (CurveZMQ) encrypts and authenticates every connection: the
agent is the CURVE *server* on each socket it binds, a driver or a monitor is
a *client* that must know the agent's public key, and the agent lets in only
the client public keys of its allow-list (ZAP, in :mod:`agent.security`).

Key files are ZeroMQ certificates as :func:`zmq.auth.create_certificates`
writes them: ``NAME.key`` holds the public key, ``NAME.key_secret`` the public
and the secret key. A secret never appears in a repr, a log record or an error
message; public keys (Z85 text) may.

Each allowed driver key has a name, its file's name without ``.key``
(:func:`key_name`: ``pump.key`` speaks as ``pump``, as ``sdl-agent keys
generate`` names them); the agent lets a key's messages in only under that
name (:func:`load_key_names`, :mod:`agent.security`).

The rule for plain-text endpoints: without keys, an endpoint that is not on
loopback is refused (:func:`insecure_refusal`) unless the user passes
``--insecure``.

>>> keys = CurveKeys.generate()
>>> keys.secret.decode() in repr(keys)
False
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth

from protocols.errors import ProtocolError
from protocols.sockets import is_loopback

__all__ = [
    "SECRET_KEY_ENV",
    "CurveClient",
    "CurveKeys",
    "KeyFileError",
    "generate_key_files",
    "insecure_refusal",
    "key_name",
    "load_allowed_keys",
    "load_key_names",
    "load_public_key",
    "load_secret_key",
]

#: a driver's or monitor's own secret key, Z85 text, when it is not in a file
SECRET_KEY_ENV = "SDL_CURVE_SECRET_KEY"
_Z85_KEY_LEN = 40
#: a name on the wire (``Name`` in protocols.messages): what a key's name must be
_WIRE_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class KeyFileError(ProtocolError):
    """A key file or key is missing, unreadable, malformed or too open; says which."""


@dataclass(frozen=True)
class CurveKeys:
    """One party's key pair, Z85 bytes; the secret is kept out of the repr."""

    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> CurveKeys:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def from_secret(cls, secret: str | bytes, *, where: str) -> CurveKeys:
        """The pair from a Z85 secret key alone (the public key is derived from it).

        Raises:
            KeyFileError: not a 40-character Z85 key (the text is not echoed).
        """
        raw = secret.encode("ascii", "replace") if isinstance(secret, str) else secret
        raw = raw.strip()
        if len(raw) != _Z85_KEY_LEN:
            raise KeyFileError(f"{where}: not a CURVE secret key (40 Z85 characters)")
        try:
            public = zmq.curve_public(raw)
        except (zmq.ZMQError, ValueError):
            raise KeyFileError(f"{where}: not a CURVE secret key (bad Z85)") from None
        return cls(public, raw)


@dataclass(frozen=True)
class CurveClient:
    """What a client socket needs: its own pair and the agent's (server's) public key."""

    keys: CurveKeys
    server_public: bytes

    def apply(self, sock: zmq.Socket) -> zmq.Socket:
        """Make ``sock`` a CURVE client of the agent; call before ``connect``."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        return sock

    @classmethod
    def from_files(
        cls,
        secret_key_file: str | os.PathLike[str] | None,
        server_key_file: str | os.PathLike[str] | None,
        env: dict[str, str] | os._Environ[str] | None = None,
    ) -> CurveClient | None:
        """The client keys of a driver or monitor, or None when none are given.

        The own secret comes from ``secret_key_file``, else from the environment
        variable ``SDL_CURVE_SECRET_KEY`` (Z85 text); the agent's public key from
        ``server_key_file``. Either without the other is an error.

        Raises:
            KeyFileError: one of the two is missing, or a key is unreadable or malformed.
        """
        env = os.environ if env is None else env
        raw = env.get(SECRET_KEY_ENV, "")
        if secret_key_file is None and not raw and server_key_file is None:
            return None
        if server_key_file is None:
            raise KeyFileError(
                "a CURVE secret key was given but not the agent's public key (--curve-server-key)"
            )
        if secret_key_file is not None:
            keys = load_secret_key(secret_key_file)
        elif raw:
            keys = CurveKeys.from_secret(raw, where=f"${SECRET_KEY_ENV}")
        else:
            raise KeyFileError(
                "the agent's public key was given but no secret key of this client "
                f"(--curve-secret-key FILE or ${SECRET_KEY_ENV})"
            )
        return cls(keys, load_public_key(server_key_file))


def load_secret_key(path: str | os.PathLike[str]) -> CurveKeys:
    """Read a ``.key_secret`` certificate; refuse one that others may read.

    Raises:
        KeyFileError: missing, unreadable, without a secret key, or group/world-accessible.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"secret key file {p}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"secret key file {p} is accessible by other users (mode {stat.filemode(mode)}); "
            f"chmod 600 {p}"
        )
    public, secret = _load_certificate(p)
    if not secret:
        raise KeyFileError(f"{p} holds no secret key (is it the public .key file?)")
    keys = CurveKeys.from_secret(secret, where=str(p))
    if keys.public != public:
        raise KeyFileError(f"{p}: its public key does not belong to its secret key")
    return keys


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85 bytes) of a ``.key`` (or ``.key_secret``) certificate.

    Raises:
        KeyFileError: missing, unreadable or malformed.
    """
    public, _ = _load_certificate(Path(path))
    if len(public) != _Z85_KEY_LEN:
        raise KeyFileError(f"{path}: not a CURVE public key (40 Z85 characters)")
    return public


def load_allowed_keys(paths: Iterable[str | os.PathLike[str]]) -> frozenset[bytes]:
    """Public keys of an allow-list: each path a ``.key`` file or a directory of them.

    Raises:
        KeyFileError: a path is missing, a file malformed, or the list ends up empty.
    """
    keys = frozenset(load_public_key(f) for f in _key_files(paths))
    if not keys:
        raise KeyFileError("the allow-list of client keys is empty")
    return keys


def key_name(path: str | os.PathLike[str]) -> str:
    """The name a key file's key speaks as: the file name without ``.key`` (or
    ``.key_secret``, or whatever suffix it has).

    >>> key_name("keys/pump.key"), key_name("pump.key_secret"), key_name("xrd")
    ('pump', 'pump', 'xrd')
    """
    return Path(path).stem


def load_key_names(paths: Iterable[str | os.PathLike[str]]) -> dict[bytes, str]:
    """The keys of a drivers' allow-list (as :func:`load_allowed_keys`), each
    with its :func:`key_name`: Z85 public key -> name.

    Raises:
        KeyFileError: as :func:`load_allowed_keys`; or a file's name is not a
            name on the wire (``A-Z a-z 0-9 _ . : -``, 1..64), or one key is in
            files of two names (a key speaks as one name).
    """
    names: dict[bytes, str] = {}
    for f in _key_files(paths):
        name = key_name(f)
        if not _WIRE_NAME.fullmatch(name):
            raise KeyFileError(
                f"{f}: {name[:80]!r} cannot be a driver's name (1..64 of A-Z a-z 0-9 _ . : -), "
                "and a key speaks as the name of its file; rename the file"
            )
        other = names.setdefault(load_public_key(f), name)
        if other != name:
            raise KeyFileError(
                f"{f}: the same key is allowed as {other!r} too; a key speaks as one name"
            )
    if not names:
        raise KeyFileError("the allow-list of client keys is empty")
    return names


def generate_key_files(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` (public, mode 0644) and ``DIR/NAME.key_secret`` (0600).

    Never overwrites: the pair is written in a private temporary directory
    beside them and linked into place, which fails if either name exists.

    Raises:
        KeyFileError: a file of that name exists, or the name is not a plain file name.
        OSError: the directory cannot be written.
    """
    d = Path(directory)
    if not name or Path(name).name != name or name.startswith("."):
        raise KeyFileError(f"key name must be a plain file name, got {name!r}")
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise KeyFileError(f"{p} exists; refusing to overwrite a key (remove it first)")
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d, prefix=".keys-") as tmp:  # mode 0700
        old = os.umask(0o077)
        try:
            tmp_public, tmp_secret = (Path(x) for x in zmq.auth.create_certificates(tmp, name))
        finally:
            os.umask(old)
        os.chmod(tmp_secret, 0o600)
        os.chmod(tmp_public, 0o644)
        try:
            os.link(tmp_secret, secret)
        except FileExistsError:
            raise KeyFileError(f"{secret} exists; refusing to overwrite a key") from None
        try:
            os.link(tmp_public, public)
        except FileExistsError:
            with contextlib.suppress(OSError):
                secret.unlink()
            raise KeyFileError(f"{public} exists; refusing to overwrite a key") from None
    return public, secret


def insecure_refusal(endpoints: Iterable[str], *, secured: bool, insecure: bool) -> str | None:
    """Why a process must not start, or None: plain text on a non-loopback endpoint.

    >>> insecure_refusal(["tcp://0.0.0.0:5560"], secured=False, insecure=False)[:40]
    'tcp://0.0.0.0:5560 is not on loopback an'
    >>> insecure_refusal(["tcp://127.0.0.1:5560"], secured=False, insecure=False) is None
    True
    """
    if secured or insecure:
        return None
    exposed = [e for e in endpoints if not is_loopback(e)]
    if not exposed:
        return None
    return (
        f"{', '.join(exposed)} is not on loopback and no CURVE keys are configured: "
        "anyone who reaches it could read and send messages. Configure keys "
        "(docs/security.md) or pass --insecure to run in plain text anyway"
    )


def _key_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob("*.key"))
            if not files:
                raise KeyFileError(f"allow-list directory {p} holds no *.key file")
            yield from files
        elif p.exists():
            yield p
        else:
            raise KeyFileError(f"allow-list entry {p}: no such file or directory")


def _load_certificate(p: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(p)
    except OSError as exc:
        raise KeyFileError(f"key file {p}: {exc.strerror or 'no such file'}") from None
    except ValueError:
        raise KeyFileError(f"key file {p}: no public-key line (not a ZeroMQ certificate)") from None
    return public, secret
