"""Signed C2PA manifests on sampled images, and `tessera verify`, with the real c2pa library."""

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import c2pa
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import provenance
from tessera.cli import main
from tiny import GEN, TOK, set_args

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Development credentials in a directory of this module's own, never the user's cache."""
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path_factory.getbasetemp() / "provenance-cache"))
    for name in (provenance.ENV_CERT, provenance.ENV_KEY, provenance.ENV_TSA, provenance.ENV_TRUST,
                 provenance.ENV_SIGN):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("prov") / "run"
    assert main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(path), "--no-progress", *set_args(GEN)]) == 0
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _sample(run: Path, out: Path, *extra: str) -> list[Path]:
    argv = ["sample", "--run", str(run), "--prompt", "a red circle", "--n", "2", "--seed", "3", "--cfg", "2",
            "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return sorted(out.glob("a-red-circle_*.png"))


def _manifest(path: Path) -> dict:
    with c2pa.Reader(str(path)) as reader:
        return reader.get_active_manifest()


def test_a_sampled_image_carries_its_prompt_settings_seed_and_weights(run, tmp_path, capsys):
    pngs = _sample(run, tmp_path / "signed")
    assert len(pngs) == 2
    weights = {part: {f.name: _sha256(f) for f in sorted((run / part).glob("*.safetensors"))}
               for part in ("generator", "tokenizer")}
    assert all(weights.values())
    for k, png in enumerate(pngs):
        m = _manifest(png)
        assert m["claim_generator_info"][0]["name"] == "tessera"
        labels = {a["label"]: a["data"] for a in m["assertions"]}
        action = labels["c2pa.actions.v2"]["actions"][0]
        assert action["action"] == "c2pa.created"
        assert action["digitalSourceType"] == provenance.TRAINED_ALGORITHMIC_MEDIA
        g = labels[provenance.ASSERTION]
        assert g["prompt"] == "a red circle" and g["seed"] == 3 and g["index"] == k
        assert g["settings"]["cfg_scale"] == 2.0 and g["run"] == str(run)
        assert g["model"]["weights"] == weights  # the sha256 of the very files that made it
    capsys.readouterr()
    assert main(["verify", *map(str, pngs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all("untrusted credential" in line and "'a red circle'" in line for line in out)


def test_signing_leaves_the_pixels_alone_and_the_seed_still_decides_them(run, tmp_path):
    signed = _sample(run, tmp_path / "a")
    again = _sample(run, tmp_path / "b")
    plain = _sample(run, tmp_path / "c", "--no-sign")
    for a, b, c in zip(signed, again, plain):
        assert np.array_equal(_pixels(a), _pixels(b)) and np.array_equal(_pixels(a), _pixels(c))
        assert a.read_bytes() != c.read_bytes()  # the manifest is there
    assert c2pa.Reader.try_create(str(plain[0])) is None


def _with_one_pixel_changed(src: Path, dst: Path) -> None:
    """The PNG with pixel (0, 0) changed and every other chunk (the manifest store included) kept as it is."""
    data = src.read_bytes()
    pixels = _pixels(src).copy()
    pixels[0, 0, 0] ^= 0x40
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter 0 on each scanline
    idat = zlib.compress(raw)
    chunks, pos, wrote = [data[:8]], 8, False
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind == b"IDAT":
            if not wrote:
                chunks.append(struct.pack(">I", len(idat)) + b"IDAT" + idat
                              + struct.pack(">I", zlib.crc32(b"IDAT" + idat) & 0xFFFFFFFF))
                wrote = True
        else:
            chunks.append(data[pos:end])
        pos = end
    dst.write_bytes(b"".join(chunks))
    changed = _pixels(dst)
    assert (changed != _pixels(src)).sum() == 1  # a real one-pixel change, still a valid PNG


def test_verify_tells_tampered_and_unsigned_files_from_good_ones(run, tmp_path, capsys):
    good = _sample(run, tmp_path / "s")[0]
    tampered = tmp_path / "tampered.png"
    _with_one_pixel_changed(good, tampered)
    plain = tmp_path / "plain.png"
    Image.fromarray(_pixels(good)).save(plain)
    missing = tmp_path / "missing.png"
    capsys.readouterr()
    assert main(["verify", str(good)]) == 0
    capsys.readouterr()
    for path, status in ((tampered, "tampered"), (plain, "no manifest"), (missing, "unreadable")):
        assert main(["verify", str(path)]) == 1
        out = capsys.readouterr()
        assert out.out.startswith(f"{path}: {status}"), out.out
        assert "1 of 1 files failed" in out.err
    v = provenance.verify_file(tampered)
    assert v.status == "tampered" and not v.ok and "assertion.dataHash.mismatch" in v.failures
    assert v.generation["prompt"] == "a red circle"  # still says what it claimed to be
    assert main(["verify", "--json", str(good), str(tampered)]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in rows] == ["untrusted credential", "tampered"]
    assert [r["passed"] for r in rows] == [True, False]


def test_the_grid_is_signed_with_the_images_as_ingredients(run, tmp_path):
    pngs = _sample(run, tmp_path / "g")
    m = _manifest(tmp_path / "g" / "grid.png")
    assert sorted(i["title"] for i in m["ingredients"]) == sorted(p.name for p in pngs)
    assert all(i["relationship"] == "componentOf" for i in m["ingredients"])
    labels = {a["label"]: a["data"] for a in m["assertions"]}
    assert labels[provenance.ASSERTION]["prompts"] == ["a red circle"]
    assert labels["c2pa.actions.v2"]["actions"][0]["digitalSourceType"] == provenance.COMPOSITE_SYNTHETIC
    assert provenance.verify_file(tmp_path / "g" / "grid.png").ok


def _user_credentials(directory: Path) -> dict[str, Path]:
    """A CA and a signing certificate of the user's own (made with the same helper, in another place)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in provenance._make_development_credentials().items():
        files[name.removeprefix(provenance.DEV_PREFIX)] = directory / name
        (directory / name).write_bytes(data)
    return files


def test_a_users_certificate_signs_and_verifies_as_trusted_with_its_root(run, tmp_path, capsys):
    creds = _user_credentials(tmp_path / "mine")
    png = _sample(run, tmp_path / "s", "--sign-cert", str(creds["signer-chain.pem"]),
                  "--sign-key", str(creds["signer-key.pem"]))[0]
    capsys.readouterr()
    assert main(["verify", "--require-trusted", str(png)]) == 1  # nothing vouches for it yet
    assert main(["verify", "--require-trusted", "--trust-anchors", str(creds["ca.pem"]), str(png)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{png}: trusted")
    other = _user_credentials(tmp_path / "other")  # another root vouches for nothing here
    assert provenance.verify_file(png, other["ca.pem"]).status == "untrusted credential"


@pytest.mark.parametrize("case", ["missing key", "cert only", "mismatch", "not a cert", "encrypted key"])
def test_bad_credentials_are_one_line_exit_2_and_nothing_is_written(run, tmp_path, capsys, case):
    mine, other = _user_credentials(tmp_path / "mine"), _user_credentials(tmp_path / "other")
    cert, key = mine["signer-chain.pem"], mine["signer-key.pem"]
    args = {"missing key": ["--sign-cert", str(cert), "--sign-key", str(tmp_path / "nope.pem")],
            "cert only": ["--sign-cert", str(cert)],
            "mismatch": ["--sign-cert", str(cert), "--sign-key", str(other["signer-key.pem"])],
            "not a cert": ["--sign-cert", str(key), "--sign-key", str(key)],
            "encrypted key": ["--sign-cert", str(cert), "--sign-key", str(_encrypted(key, tmp_path))]}[case]
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["sample", "--run", str(run), "--prompt", "a red circle", "--n", "1", "--out", str(out),
                 "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not list(out.glob("*.png")) if out.exists() else True


def _encrypted(key: Path, tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    k = serialization.load_pem_private_key(key.read_bytes(), password=None)
    path = tmp_path / "encrypted.pem"
    path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"secret")))
    return path


def test_development_credentials_are_made_once_and_named_untrusted(tmp_path):
    first = provenance.development_credentials(tmp_path / "c2pa")
    stamp = first.cert_chain.read_bytes()
    again = provenance.development_credentials(tmp_path / "c2pa")
    assert again.cert_chain.read_bytes() == stamp and again.development
    assert all(p.name.startswith(provenance.DEV_PREFIX) for p in (first.cert_chain, first.private_key))
    assert oct(first.private_key.stat().st_mode & 0o777) == "0o600"
    assert "untrusted" in (tmp_path / "c2pa" / "README.txt").read_text().lower()


def test_signing_can_be_switched_off_by_the_environment(run, tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.ENV_SIGN, "0")
    png = _sample(run, tmp_path / "off")[0]
    assert provenance.verify_file(png).status == "no manifest"


def test_write_png_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    class Broken:
        def sign_png(self, *a, **k):
            raise provenance.ProvenanceError("signing failed: no")

    from pipelines.png import write_png

    target = tmp_path / "x.png"
    with pytest.raises(provenance.ProvenanceError):
        write_png(target, np.zeros((4, 4, 3), np.uint8), Broken(), {"prompt": "p"})
    assert list(tmp_path.iterdir()) == []
