"""Provenance on every image Tessera writes: signed C2PA manifests, and reading them back.

    signer = resolve_signer()                        # the user's credentials, or local development ones
    png = signer.sign_png(png_bytes, manifest)        # the same pixels, a signed manifest store added
    verify_file("out/a-red-circle_000.png")           # -> Verification: trusted / untrusted credential / ...

The manifests are made and checked by `c2pa-python` (the Content Authenticity Initiative's
bindings to c2pa-rs); nothing here parses or hashes JUMBF by hand. A manifest holds:

- `c2pa.actions`: `c2pa.created` (or `c2pa.edited`, with the source image as the parent
  ingredient), with the IPTC digital source type for trained algorithmic media;
- the claim generator: tessera and its version;
- `org.tessera.generation`: the prompt (or instructions), the sampling settings, the seed,
  and the sha256 of every weights file of the models that made it (`weights_sha256`).

Credentials: a PEM certificate chain (the signing certificate first) and its PEM private key,
given as arguments or by TESSERA_C2PA_CERT / TESSERA_C2PA_KEY, with an optional RFC 3161
timestamp authority URL (TESSERA_C2PA_TSA_URL). Without them, a local development CA and a
signing certificate it issued are created once (with the `cryptography` library) in
TESSERA_CACHE (default ~/.cache/tessera)/c2pa/, in files named UNTRUSTED-dev-*: no verifier
trusts them, so images signed with them verify as "untrusted credential". TESSERA_SIGN=0
(or `signer=None`, `--no-sign`) writes unsigned images.

Verification reports one of: "trusted" (valid, and the certificate chains to a trust anchor
given with `trust_anchors` / TESSERA_C2PA_TRUST_ANCHORS), "untrusted credential" (valid, but
nothing vouches for the signer), "tampered" (a hash or signature does not match: the pixels or
the manifest changed after signing), "no manifest", "unreadable".
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipelines.errors import RunError

ASSERTION = "org.tessera.generation"  # the label of Tessera's own assertion
PARENT = "parent"  # the label of an edit's parent ingredient, which its c2pa.opened action names
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE_SYNTHETIC = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeSynthetic"
DEV_PREFIX = "UNTRUSTED-dev-"  # every development credential file's name starts so
ENV_CERT, ENV_KEY, ENV_TSA = "TESSERA_C2PA_CERT", "TESSERA_C2PA_KEY", "TESSERA_C2PA_TSA_URL"
ENV_TRUST, ENV_SIGN = "TESSERA_C2PA_TRUST_ANCHORS", "TESSERA_SIGN"
STATUSES = ("trusted", "untrusted credential", "tampered", "no manifest", "unreadable")
_UNTRUSTED = {"signingCredential.untrusted"}  # the one failure that leaves the signature itself valid
_LIBRARY_SETTINGS = {  # no thumbnail: for images of 24-64 px it would outweigh the image (130 KB vs 5 KB a PNG)
    "builder": {"thumbnail": {"enabled": False}},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},  # offline: nothing is fetched
}


class ProvenanceError(RunError):
    """Credentials that cannot sign (missing, unreadable, mismatched), or a signing failure."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tessera")
    except PackageNotFoundError:
        return "0+unknown"


# ---------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    cert_chain: Path  # PEM: the signing certificate, then its issuers
    private_key: Path  # PEM, unencrypted
    tsa_url: str | None = None
    development: bool = False  # the local development credentials (untrusted)


def cache_dir() -> Path:
    """Where the development credentials live (TESSERA_CACHE, default ~/.cache/tessera, then c2pa/)."""
    return Path(os.environ.get("TESSERA_CACHE") or "~/.cache/tessera").expanduser() / "c2pa"


def development_credentials(directory: str | Path | None = None) -> Credentials:
    """The local development CA and signing certificate, created on first use in `directory`
    (default `cache_dir()`); written to a temporary directory and renamed, so that a process
    never sees half of them and two processes creating them at once both end with one set."""
    directory = Path(directory) if directory is not None else cache_dir()
    chain, key = directory / f"{DEV_PREFIX}signer-chain.pem", directory / f"{DEV_PREFIX}signer-key.pem"
    if not (chain.is_file() and key.is_file()):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".c2pa-", dir=directory.parent))
        for name, data in _make_development_credentials().items():
            (tmp / name).write_bytes(data)
        (tmp / f"{DEV_PREFIX}signer-key.pem").chmod(0o600)
        (tmp / "README.txt").write_text(
            "Development credentials made by Tessera to sign images when no certificate is configured.\n"
            "They are UNTRUSTED: no verifier trusts this CA, and images signed with them verify as\n"
            "'untrusted credential'. Set TESSERA_C2PA_CERT / TESSERA_C2PA_KEY to a real certificate\n"
            "chain and key (see the README) to sign with your own identity.\n")
        try:
            tmp.rename(directory)
        except OSError:  # another process made them first (or a stray empty directory is there)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            if not (chain.is_file() and key.is_file()):
                raise ProvenanceError(f"cannot create development signing credentials in {str(directory)!r}: "
                                      "it exists without them; remove it")
    return Credentials(chain, key, None, development=True)


def _make_development_credentials() -> dict[str, bytes]:
    """A self-signed CA (10 years) and an ES256 signing certificate it issues (1 year), as PEM files.
    The signing certificate carries what C2PA requires of one: digital signature key usage, an
    extended key usage (email protection), not a CA, key identifiers."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tessera development (untrusted)")])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign, crl_sign=not sign,
                             encipher_only=False, decipher_only=False)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = name("Tessera development CA (untrusted)")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("Tessera development signer (untrusted)")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {
        f"{DEV_PREFIX}ca.pem": ca.public_bytes(pem),
        f"{DEV_PREFIX}signer-chain.pem": cert.public_bytes(pem) + ca.public_bytes(pem),
        f"{DEV_PREFIX}signer-key.pem": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()),
    }


def credentials_from(cert: str | Path | None = None, key: str | Path | None = None,
                     tsa_url: str | None = None) -> Credentials:
    """The user's credentials (arguments, else TESSERA_C2PA_CERT / _KEY / _TSA_URL), or the development ones
    when neither a certificate nor a key is given. One without the other is an error."""
    cert = cert or os.environ.get(ENV_CERT) or None
    key = key or os.environ.get(ENV_KEY) or None
    tsa_url = tsa_url or os.environ.get(ENV_TSA) or None
    if cert is None and key is None:
        return development_credentials()
    if cert is None or key is None:
        given, missing = ("certificate", "private key") if key is None else ("private key", "certificate")
        raise ProvenanceError(f"a signing {given} was given without its {missing} (--sign-cert/--sign-key or "
                              f"{ENV_CERT}/{ENV_KEY}): give both, or neither for the development credentials")
    return Credentials(Path(cert).expanduser(), Path(key).expanduser(), tsa_url)


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ProvenanceError(f"signing {what} {str(path)!r} " + ("is a directory" if path.is_dir() else "does not exist"))
    try:
        return path.read_bytes()
    except OSError as e:
        raise ProvenanceError(f"cannot read signing {what} {str(path)!r}: {e.strerror or e}") from e


def _algorithm(creds: Credentials) -> tuple[str, bytes, bytes]:
    """(c2pa algorithm name, certificate chain PEM, key PEM), after checking that both parse and that the key
    is the certificate's: a mismatch is named here, not as a failed signature later."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    chain_pem, key_pem = _read(creds.cert_chain, "certificate"), _read(creds.private_key, "key")
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as e:
        raise ProvenanceError(f"{str(creds.cert_chain)!r} is not a PEM certificate chain ({e})") from e
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:  # TypeError: an encrypted key
        raise ProvenanceError(f"{str(creds.private_key)!r} is not an unencrypted PEM private key ({e})") from e
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != certs[0].public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ProvenanceError(f"the key {str(creds.private_key)!r} does not match the signing certificate (the first "
                              f"in {str(creds.cert_chain)!r})")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        bits = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in bits:
            raise ProvenanceError(f"C2PA cannot sign with an EC key on {key.curve.name} (P-256, P-384 or P-521)")
        return bits[key.curve.name], chain_pem, key_pem
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", chain_pem, key_pem
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256", chain_pem, key_pem
    raise ProvenanceError(f"C2PA cannot sign with a {type(key).__name__} key (EC, Ed25519 or RSA)")


# ---------------------------------------------------------------- signing


class Signer:
    """Signs PNG bytes with one set of credentials (checked when made)."""

    def __init__(self, credentials: Credentials):
        import c2pa

        self.credentials = credentials
        alg, chain, key = _algorithm(credentials)
        try:
            self._signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg.encode(), chain, key, credentials.tsa_url))
        except c2pa.C2paError as e:
            raise ProvenanceError(f"c2pa cannot sign with {str(credentials.cert_chain)!r}: {e}") from e
        self._context = c2pa.Context.from_dict(_LIBRARY_SETTINGS)

    def sign_png(self, png: bytes, manifest: dict, ingredients: Sequence[tuple[dict, str | Path]] = ()) -> bytes:
        """`png` with a signed manifest store embedded; `ingredients`: (ingredient JSON, path of the file)."""
        import c2pa

        try:
            builder = c2pa.Builder(manifest, context=self._context)
            for spec, path in ingredients:
                with open(path, "rb") as f:
                    builder.add_ingredient(spec, _mime(Path(path)), f)
            out = io.BytesIO()
            builder.sign(self._signer, "image/png", io.BytesIO(png), out)
        except c2pa.C2paError as e:
            raise ProvenanceError(f"signing failed: {e}") from e
        return out.getvalue()


def _mime(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return Image.MIME.get(im.format or "", "image/png")
    except OSError:
        return "image/png"


@functools.cache
def _default_signer(cert: str | None, key: str | None, tsa: str | None, cache: str) -> Signer:
    return Signer(credentials_from(cert, key, tsa))


def resolve_signer(enabled: bool | None = None, cert: str | Path | None = None, key: str | Path | None = None,
                   tsa_url: str | None = None) -> Signer | None:
    """The signer images are written with: None when signing is off (`enabled=False`, or TESSERA_SIGN=0 when
    `enabled` is None); else from the arguments, the environment, or the development credentials. Made once per
    process for the same credentials; bad credentials raise ProvenanceError before anything is sampled."""
    if enabled is None:
        enabled = os.environ.get(ENV_SIGN, "1").strip().lower() not in ("0", "false", "no", "off")
    if not enabled:
        return None
    env = lambda name, given: str(given) if given else (os.environ.get(name) or None)  # noqa: E731
    return _default_signer(env(ENV_CERT, cert), env(ENV_KEY, key), env(ENV_TSA, tsa_url), str(cache_dir()))


def weights_sha256(directory: str | Path) -> dict[str, str]:
    """{weights file name: sha256} of a saved model directory (generator, tokenizer or baseline): the digests
    recorded when the weights were written (and checked when they were loaded), computed for files without one."""
    directory = Path(directory)
    recorded: dict[str, str] = {}
    for meta in ("tessera_layout.json", "config.json"):  # ar_model's, vqtok's and baseline's records
        try:
            found = json.loads((directory / meta).read_text()).get("sha256", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, dict):
            recorded.update({k: v for k, v in found.items() if isinstance(v, str)})
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        if f.name not in recorded:  # older directories recorded none: hash it (1 MiB at a time)
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            recorded[f.name] = h.hexdigest()
        out[f.name] = recorded[f.name]
    return out


def model_record(kind: str, origin: dict) -> dict:
    """A sampler's provenance record: its kind, run, and {part: weights_sha256(directory)} for the model
    directories in origin["dirs"] (none for a sampler not opened from a run)."""
    return {"kind": kind, "run": str(origin.get("run", "")),
            "weights": {part: weights_sha256(d) for part, d in origin.get("dirs", {}).items()}}


def manifest(title: str, generation: dict, action: str = "c2pa.created",
             source_type: str = TRAINED_ALGORITHMIC_MEDIA) -> dict:
    """A manifest definition: one action (c2pa.created / c2pa.edited), the claim generator, and Tessera's
    assertion `generation` (prompt or instructions, settings, seed, weights' sha256, run)."""
    actions: list[dict[str, Any]] = [{"action": action, "digitalSourceType": source_type,
                                      "softwareAgent": {"name": "tessera", "version": _version()}}]
    if action == "c2pa.edited":  # C2PA: an edit's first action opens its parent ingredient (see `parent`)
        actions.insert(0, {"action": "c2pa.opened", "parameters": {"ingredientIds": [PARENT]}})
    return {
        "claim_generator_info": [{"name": "tessera", "version": _version()}],
        "title": title,
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions}},
            {"label": ASSERTION, "data": generation},
        ],
    }


def parent(path: str | Path) -> tuple[dict, Path]:
    """An ingredient spec for the image an edit started from (its own manifest, if any, travels with it)."""
    return {"title": Path(path).name, "relationship": "parentOf", "label": PARENT}, Path(path)


def component(path: str | Path) -> tuple[dict, Path]:
    """An ingredient spec for one image of a grid (a composite)."""
    return {"title": Path(path).name, "relationship": "componentOf"}, Path(path)


# ---------------------------------------------------------------- verification


@dataclass
class Verification:
    path: str
    status: str  # one of STATUSES
    ok: bool  # the file carries a manifest that validates (trusted or not)
    claim_generator: str = ""
    signer: str = ""  # the signing certificate's common name and issuer
    action: str = ""
    generation: dict = field(default_factory=dict)  # Tessera's assertion, when there is one
    failures: list[str] = field(default_factory=list)  # the validation failure codes
    detail: str = ""

    def line(self) -> str:
        """One line for `tessera verify`."""
        head = f"{self.path}: {self.status}"
        if self.status in ("no manifest", "unreadable"):
            return head + (f" ({self.detail})" if self.detail else "")
        parts = [f"made by {self.claim_generator or '?'}", f"signed by {self.signer or '?'}"]
        if self.action:
            parts.append(self.action.removeprefix("c2pa."))
        g = self.generation
        if g.get("run"):
            parts.append(f"run {g['run']}")
        text = g.get("prompt") if "prompt" in g else (" / ".join(g["instructions"]) if g.get("instructions") else None)
        if text is not None:
            parts.append(f"{'prompt' if 'prompt' in g else 'instructions'} {text!r}")
        if g.get("seed") is not None:
            parts.append(f"seed {g['seed']}")
        extra = [f for f in self.failures if f not in _UNTRUSTED]
        if extra:
            parts.append("failed: " + ", ".join(sorted(set(extra))))
        return head + " -- " + "; ".join(parts)


@functools.cache
def _reader_context(anchors: str | None) -> Any:
    import c2pa

    settings = {k: dict(v) for k, v in _LIBRARY_SETTINGS.items() if k == "verify"}
    if anchors:
        settings["trust"] = {"user_anchors": anchors}
    return c2pa.Context.from_dict(settings)


def verify_file(path: str | Path, trust_anchors: str | Path | None = None) -> Verification:
    """Read `path`'s manifest store and validate it (offline). `trust_anchors`: a PEM file of root certificates
    to trust (default TESSERA_C2PA_TRUST_ANCHORS; none: nothing is trusted)."""
    import c2pa

    path = Path(path)
    anchors_file = trust_anchors or os.environ.get(ENV_TRUST) or None
    anchors = _read(Path(anchors_file).expanduser(), "trust anchors").decode("utf-8", "replace") if anchors_file else None
    if not path.is_file():
        return Verification(str(path), "unreadable", False, detail="no such file" if not path.exists() else "not a file")
    try:
        reader = c2pa.Reader.try_create(str(path), context=_reader_context(anchors))
    except c2pa.C2paError as e:
        return Verification(str(path), "unreadable", False, detail=str(e).splitlines()[0][:200])
    if reader is None:
        return Verification(str(path), "no manifest", False, detail="no C2PA manifest store in the file")
    with reader:
        active = reader.get_active_manifest() or {}
        results = (reader.get_validation_results() or {}).get("activeManifest", {})
        state = reader.get_validation_state() or ""
    failures = [f.get("code", "") for f in results.get("failure", [])]
    trusted = state == "Trusted" or any(s.get("code") == "signingCredential.trusted" for s in results.get("success", []))
    if set(failures) - _UNTRUSTED or state == "Invalid":
        status = "tampered"
    else:
        status = "trusted" if trusted and not failures else "untrusted credential"
    sig = active.get("signature_info", {})
    gen = active.get("claim_generator_info") or [{}]
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [{}])
    return Verification(
        str(path), status, status in ("trusted", "untrusted credential"),
        claim_generator=" ".join(str(gen[0].get(k, "")) for k in ("name", "version")).strip(),
        signer=f"{sig.get('common_name', '?')} ({sig.get('issuer', '?')})" if sig else "",
        action=(actions[-1] or {}).get("action", "") if actions else "",  # an edit: opened, then edited
        generation=assertions.get(ASSERTION) or {}, failures=failures,
    )


__all__ = ["ASSERTION", "STATUSES", "Credentials", "ProvenanceError", "Signer", "Verification", "cache_dir",
           "component", "credentials_from", "development_credentials", "manifest", "model_record", "parent", "resolve_signer",
           "verify_file", "weights_sha256"]
