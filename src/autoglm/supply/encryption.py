"""Encrypted model packages: AES-256-GCM in authenticated chunks, the data key wrapped for
each recipient's X25519 key. Built on the ``cryptography`` package (OpenSSL underneath).

A package is one file::

    magic      8 bytes  b"AGLMENC" + version byte (1)
    length     4 bytes  big-endian length L of the header
    header     L bytes  JSON: chunk size, plaintext size and SHA-256, nonce prefix, the
                        original file name, and per recipient the wrapped data key
    header tag 16 bytes AES-GCM tag over magic+length+header (nonce: prefix + 2^64-1)
    chunks     each ``chunk_size`` bytes of plaintext (the last one shorter) encrypted
               with the data key, followed by its 16-byte tag

Chunk ``i``'s nonce is the file's random 4-byte prefix and ``i`` (8 bytes); its associated
data is the SHA-256 of the header, ``i`` and a final-chunk flag, so a chunk moved, dropped,
taken from another package or a package cut after any chunk fails authentication. The data
key (random, 32 bytes) is never reused across packages. Wrapping: an ephemeral X25519 key
per recipient, HKDF-SHA256 over the shared secret (salt: both public keys) gives a one-time
key that encrypts the data key with AES-256-GCM.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from autoglm.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from autoglm.supply.registry import Registry

MAGIC = b"AGLMENC\x01"
SUFFIX = ".enc"
CHUNK_SIZE = 1 << 20
TAG = 16
MAX_HEADER = 1 << 20
WRAP_INFO = b"autoglm-model-key-v1"
HEADER_INDEX = (1 << 64) - 1  # the header tag's nonce; chunks count up from 0
KEY_ENV = "AUTOGLM_MODEL_KEY"
Progress = Callable[[int], None]


def is_encrypted(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


# --- keys ------------------------------------------------------------------------------
def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: X25519PublicKey) -> str:
    return "sha256:" + hashlib.sha256(_raw(key)).hexdigest()[:32]


def generate_keypair(private_out: Path, public_out: Path) -> str:
    """Write a new X25519 key pair (PEM; the private file mode 0600); return its key id."""
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_out.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


def load_public(path: Path) -> X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"recipient key {path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"recipient key {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, X25519PublicKey):
        raise ConfigError(f"recipient key {path} is not an X25519 key (make one with "
                          "`autoglm model keygen`)")
    return key


def parse_private(data: bytes, where: str) -> X25519PrivateKey:
    """An X25519 private key: PEM (PKCS#8), or its 32 raw bytes in base64 (for env vars)."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(text, password=None)
        else:
            key = X25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"the model key from {where} is not an X25519 private key (PEM, "
                          f"or 32 bytes in base64): {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"the model key from {where} is not an X25519 private key")
    return key


def model_key(key_file: Path | None, environ: dict[str, str] | None = None
              ) -> X25519PrivateKey | None:
    """The key to decrypt models with: ``key_file``, else ``$AUTOGLM_MODEL_KEY``."""
    if key_file is not None:
        try:
            data = key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"model key file {key_file} cannot be read: {exc.strerror}"
                              ) from None
        return parse_private(data, str(key_file))
    value = (environ if environ is not None else os.environ).get(KEY_ENV)
    return parse_private(value.encode(), f"${KEY_ENV}") if value else None


def _kek(shared: bytes, epk: bytes, rpk: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=epk + rpk, info=WRAP_INFO).derive(shared)


def _wrap(data_key: bytes, recipient: X25519PublicKey) -> dict[str, str]:
    eph = X25519PrivateKey.generate()
    epk = _raw(eph.public_key())
    kek = _kek(eph.exchange(recipient), epk, _raw(recipient))
    wrapped = AESGCM(kek).encrypt(bytes(12), data_key, WRAP_INFO)
    return {"kid": key_id(recipient), "alg": "X25519-HKDF-SHA256-A256GCM",
            "epk": base64.b64encode(epk).decode(), "wrapped": base64.b64encode(wrapped).decode()}


# --- the format ------------------------------------------------------------------------
def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">Q", index)


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, int(final))


def n_chunks(plain_size: int, chunk_size: int) -> int:
    return max(1, -(-plain_size // chunk_size))


@dataclass(frozen=True)
class Header:
    meta: dict[str, Any]
    raw: bytes  # magic + length + JSON: what the header tag and every chunk authenticate
    tag: bytes

    @property
    def data_offset(self) -> int:
        return len(self.raw) + TAG

    @property
    def chunk_size(self) -> int:
        return int(self.meta["chunk_size"])

    @property
    def plain_size(self) -> int:
        return int(self.meta["plain_size"])

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @property
    def prefix(self) -> bytes:
        return bytes.fromhex(self.meta["nonce_prefix"])

    @property
    def total_size(self) -> int:
        """The package's size, as its header describes it."""
        return self.data_offset + self.plain_size + n_chunks(self.plain_size,
                                                            self.chunk_size) * TAG

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset in the package, length with its tag) of chunk ``index``."""
        start = index * self.chunk_size
        length = min(self.chunk_size, self.plain_size - start)
        return self.data_offset + index * (self.chunk_size + TAG), length + TAG

    def unwrap(self, key: X25519PrivateKey, where: str) -> bytes:
        """The data key, unwrapped with ``key``; ConfigError naming the recipients when
        ``key`` is not one of them."""
        kid = key_id(key.public_key())
        recipients = self.meta.get("recipients") or []
        for r in recipients:
            if r.get("kid") != kid:
                continue
            epk = base64.b64decode(r["epk"])
            kek = _kek(key.exchange(X25519PublicKey.from_public_bytes(epk)), epk,
                       _raw(key.public_key()))
            try:
                data_key = AESGCM(kek).decrypt(bytes(12), base64.b64decode(r["wrapped"]),
                                               WRAP_INFO)
            except InvalidTag:
                raise IntegrityError(f"refusing {where}: the data key wrapped for {kid} fails "
                                     "authentication (the package was changed)") from None
            try:
                AESGCM(data_key).decrypt(_nonce(self.prefix, HEADER_INDEX), self.tag, self.raw)
            except InvalidTag:
                raise IntegrityError(f"refusing {where}: its header fails authentication "
                                     "(the package was changed)") from None
            return data_key
        kids = ", ".join(str(r.get("kid")) for r in recipients) or "none"
        raise ConfigError(f"cannot decrypt {where}: the model key ({kid}) is not one of the "
                          f"package's recipients ({kids}); set model_key_file or "
                          f"${KEY_ENV} to a recipient's private key")


def read_header(fd: int, where: str) -> Header:
    head = os.pread(fd, 12, 0)
    if len(head) < 12 or head[:8] != MAGIC:
        raise IntegrityError(f"refusing {where}: not an encrypted model package (bad magic)")
    (length,) = struct.unpack(">I", head[8:12])
    if length > MAX_HEADER:
        raise IntegrityError(f"refusing {where}: its header claims {length} bytes (damaged)")
    body = os.pread(fd, length + TAG, 12)
    if len(body) != length + TAG:
        raise IntegrityError(f"refusing {where}: truncated inside its header")
    try:
        meta = json.loads(body[:length])
        header = Header(meta, head + body[:length], body[length:])
        ok = (meta.get("version") == 1 and meta.get("cipher") == "AES-256-GCM"
              and 0 < header.chunk_size <= 1 << 30 and header.plain_size >= 0
              and len(header.prefix) == 4)
    except (ValueError, TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise IntegrityError(f"refusing {where}: its header is damaged or of an unknown "
                             "version")
    return header


def encrypt_file(src: Path, dst: Path, recipients: list[X25519PublicKey], *,
                 chunk_size: int = CHUNK_SIZE, progress: Progress | None = None
                 ) -> dict[str, Any]:
    """Encrypt ``src`` into ``dst`` (written under a temporary name, then renamed);
    returns the header's facts and both SHA-256 digests."""
    if not recipients:
        raise ConfigError("name at least one recipient key (--recipient PUB.pem)")
    plain_size = src.stat().st_size
    plain_sha = hashlib.sha256()
    with src.open("rb") as fh:  # the plaintext's hash goes in the header: one pass first
        while block := fh.read(CHUNK_SIZE):
            plain_sha.update(block)
    data_key = AESGCM.generate_key(bit_length=256)
    prefix = os.urandom(4)
    meta = {"format": "autoglm-encrypted-model", "version": 1, "cipher": "AES-256-GCM",
            "chunk_size": chunk_size, "plain_size": plain_size,
            "plain_sha256": plain_sha.hexdigest(), "nonce_prefix": prefix.hex(),
            "name": src.name, "recipients": [_wrap(data_key, r) for r in recipients]}
    body = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    raw = MAGIC + struct.pack(">I", len(body)) + body
    aead = AESGCM(data_key)
    digest = hashlib.sha256(raw).digest()
    out_sha = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with src.open("rb", buffering=0) as fin, tmp.open("wb") as fout:
            first = raw + aead.encrypt(_nonce(prefix, HEADER_INDEX), b"", raw)
            fout.write(first)
            out_sha.update(first)
            total = n_chunks(plain_size, chunk_size)
            for i in range(total):
                block = fin.read(chunk_size)
                sealed = aead.encrypt(_nonce(prefix, i), block, _aad(digest, i, i == total - 1))
                fout.write(sealed)
                out_sha.update(sealed)
                if progress is not None:
                    progress(len(block))
            if fin.read(1):
                raise ConfigError(f"{src} grew while it was encrypted; try again")
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"format": "autoglm-encrypted-model", "version": 1, "cipher": "AES-256-GCM",
            "key_wrap": "X25519 + HKDF-SHA256 + AES-256-GCM", "library": "cryptography",
            "chunk_size": chunk_size, "plain_size": plain_size,
            "plain_sha256": meta["plain_sha256"], "sha256": out_sha.hexdigest(),
            "size": dst.stat().st_size, "recipients": [r["kid"] for r in meta["recipients"]],
            "plain_name": src.name}


def decrypt_chunks(fd: int, header: Header, data_key: bytes, where: str,
                   on_cipher: Callable[[memoryview], None] | None = None
                   ) -> Iterator[bytes]:
    """Every chunk's plaintext, in order, each authenticated before it is given out;
    IntegrityError naming the byte offset of the first chunk that fails, or of the end
    when the package is shorter or longer than its header says."""
    size = os.fstat(fd).st_size
    if size != header.total_size:
        end = min(size, header.total_size)
        raise IntegrityError(
            f"refusing {where}: it is {size} bytes, its header says {header.total_size} "
            f"({'truncated' if size < header.total_size else 'extra bytes'} at byte offset "
            f"{end}; the package was changed)")
    aead = AESGCM(data_key)
    digest, prefix = header.digest, header.prefix
    total = n_chunks(header.plain_size, header.chunk_size)
    buf = bytearray(header.chunk_size + TAG)
    view = memoryview(buf)
    for i in range(total):
        offset, length = header.chunk_span(i)
        got = os.preadv(fd, [view[:length]], offset)
        if got != length:
            raise IntegrityError(f"refusing {where}: truncated at byte offset {offset + got} "
                                 f"(chunk {i} of {total})")
        if on_cipher is not None:
            on_cipher(view[:length])
        try:
            yield aead.decrypt(_nonce(prefix, i), view[:length], _aad(digest, i, i == total - 1))
        except InvalidTag:
            raise IntegrityError(
                f"refusing {where}: chunk {i} of {total} at byte offset {offset} ({length} "
                "bytes with its tag) fails authentication; the package was changed or "
                "damaged") from None


# --- registered models -----------------------------------------------------------------
def _gguf_of(root: Path, name: str) -> Path:
    if root.is_file():
        return root
    ggufs = [f for f in sorted(root.iterdir()) if f.suffix == ".gguf"] if root.is_dir() else []
    if len(ggufs) != 1:
        raise ConfigError(f"model '{name}' has {len(ggufs)} GGUF files; encrypt needs exactly "
                          "one")
    return ggufs[0]


def encrypt_registered(registry: Registry, name: str, recipients: list[Path],
                       out_name: str | None = None, progress: Progress | None = None
                       ) -> dict[str, Any]:
    """Encrypt a registered GGUF model for ``recipients`` (X25519 public keys, PEM) and
    register the package as ``out_name`` (default NAME-enc): its manifest lists the
    package's SHA-256 (what ``model verify`` checks at rest) and the plaintext's (what the
    engine checks at load)."""
    from autoglm.supply import manifest as mf
    from autoglm.timefmt import stamp

    entry = registry.get(name)
    if entry.get("encryption"):
        raise ConfigError(f"model '{name}' is already an encrypted package")
    out_name = out_name or f"{name}-enc"
    registry.ensure_free(out_name)
    keys = [load_public(p) for p in recipients]
    root = Path(entry["path"])
    src = _gguf_of(root, name)
    rel = src.name if root.is_file() else src.relative_to(root).as_posix()
    listed = {f["path"]: f for f in entry["manifest"]["files"]}.get(rel)
    dst = registry.dir / "store" / out_name / (src.name + SUFFIX)
    info = encrypt_file(src, dst, keys, progress=progress)
    if listed is None or info["plain_sha256"] != listed["sha256"]:
        dst.unlink(missing_ok=True)
        raise IntegrityError(f"model '{name}': {rel} changed since it was registered; run "
                             f"`autoglm model verify {name}`")
    manifest = {"version": mf.MANIFEST_VERSION, "created_at": stamp(),
                "source": f"encrypted:{name}", "revision": entry.get("revision"),
                "files": [{"path": dst.name, "size": info["size"], "sha256": info["sha256"],
                           "plaintext": {"path": rel, "size": info["plain_size"],
                                         "sha256": info["plain_sha256"]}}],
                "total_size": info["size"]}
    new = registry.register(out_name, dst, manifest, source=f"encrypted:{name}",
                            revision=entry.get("revision"))
    new.update(format=entry.get("format"), quantization=entry.get("quantization"),
               encryption={k: info[k] for k in ("cipher", "key_wrap", "library", "chunk_size",
                                                "recipients", "plain_sha256", "plain_size")}
               | {"from": name})
    registry.save(new)
    return new
