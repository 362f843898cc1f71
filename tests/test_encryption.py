"""hardway.encryption: the EncryptionConfiguration is written once and never regenerated."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from hardway import encryption, inventory
from hardway.errors import HardwayError
from hardway.state import PkiState

SAMPLE = Path(__file__).resolve().parent.parent / "inventory" / "sample.yaml"
TEXT = SAMPLE.read_text()
PROVIDER_LINE = TEXT[TEXT.index("  provider: secretbox"):].split("\n", 1)[0]
SECRETBOX = inventory.load(SAMPLE)
AESCBC = inventory.parse(TEXT.replace(PROVIDER_LINE, "  provider: aescbc"), str(SAMPLE))
AESGCM = inventory.parse(TEXT.replace(PROVIDER_LINE, "  provider: aesgcm"), str(SAMPLE))
DEFAULT = inventory.parse(TEXT.replace(PROVIDER_LINE, "  {}").replace("encryption:\n  {}", "encryption: {}"),
                          str(SAMPLE))


def test_written_once_with_the_right_shape(tmp_path):
    state = PkiState(tmp_path / "pki")
    out = encryption.ensure_encryption_config(AESCBC, state)
    assert (out.kind, out.name, out.action) == ("encryption-config", "encryption-config", "written")
    path = state.encryption_config
    assert path.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(path.read_bytes())
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1"
    assert doc["kind"] == "EncryptionConfiguration"
    [entry] = doc["resources"]
    assert entry["resources"] == ["secrets"]
    first, last = entry["providers"]
    assert last == {"identity": {}}
    [key] = first["aescbc"]["keys"]
    assert key["name"] == "key1"
    secret = base64.b64decode(key["secret"], validate=True)
    assert len(secret) == 32
    for text in (str(out), repr(out), " ".join(out.reasons)):
        assert key["secret"] not in text

    before = (path.read_bytes(), path.stat().st_mtime_ns)
    again = encryption.ensure_encryption_config(AESCBC, state)
    assert (again.action, again.reasons) == ("kept", ())
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_aesgcm_and_fresh_random_keys(tmp_path):
    a, b = PkiState(tmp_path / "a"), PkiState(tmp_path / "b")
    encryption.ensure_encryption_config(AESGCM, a)
    encryption.ensure_encryption_config(AESGCM, b)
    keys = []
    for st in (a, b):
        providers = yaml.safe_load(st.encryption_config.read_bytes())["resources"][0]["providers"]
        assert list(providers[0]) == ["aesgcm"] and providers[-1] == {"identity": {}}
        keys.append(providers[0]["aesgcm"]["keys"][0]["secret"])
    assert keys[0] != keys[1]


def _existing(tmp_path, data: bytes) -> PkiState:
    state = PkiState(tmp_path / "pki")
    state.ensure_root()
    state.encryption_config.write_bytes(data)
    os.chmod(state.encryption_config, 0o600)
    return state


def test_corrupted_file_is_refused_not_overwritten_and_not_echoed(tmp_path):
    data = b"apiVersion: [apiserver.config.k8s.io/v1\nsecret: TOPSECRETKEYMATERIAL=\n"
    state = _existing(tmp_path, data)
    with pytest.raises(HardwayError) as err:
        encryption.ensure_encryption_config(AESCBC, state)
    msg = str(err.value)
    assert str(state.encryption_config) in msg and "not valid YAML" in msg and "will not overwrite" in msg
    assert "TOPSECRETKEYMATERIAL" not in msg and "\n" not in msg
    assert state.encryption_config.read_bytes() == data


def test_other_provider_is_refused(tmp_path):
    gcm = PkiState(tmp_path / "gcm")
    encryption.ensure_encryption_config(AESGCM, gcm)
    data = gcm.encryption_config.read_bytes()
    with pytest.raises(HardwayError, match=r"'aesgcm'.*'aescbc'.*set encryption.provider: aesgcm"):
        encryption.ensure_encryption_config(AESCBC, gcm)
    assert gcm.encryption_config.read_bytes() == data


def test_wrong_shape_or_key_is_refused(tmp_path):
    short = encryption.render("aescbc", b"x" * 7)
    state = _existing(tmp_path, short)
    with pytest.raises(HardwayError, match="not 16, 24 or 32 bytes"):
        encryption.ensure_encryption_config(AESCBC, state)
    state.encryption_config.write_bytes(b"apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(HardwayError, match="not an EncryptionConfiguration"):
        encryption.ensure_encryption_config(AESCBC, state)
    assert state.encryption_config.read_bytes() == b"apiVersion: v1\nkind: ConfigMap\n"


def test_loose_mode_is_tightened(tmp_path):
    state = PkiState(tmp_path / "pki")
    encryption.ensure_encryption_config(AESCBC, state)
    data = state.encryption_config.read_bytes()
    os.chmod(state.encryption_config, 0o644)
    out = encryption.ensure_encryption_config(AESCBC, state)
    assert (out.action, out.reasons) == ("kept", ("mode 0644 → 0600",))
    assert state.encryption_config.stat().st_mode & 0o777 == 0o600
    assert state.encryption_config.read_bytes() == data


def test_new_clusters_get_secretbox_and_an_unset_provider_keeps_an_existing_config(tmp_path):
    fresh = PkiState(tmp_path / "fresh")
    out = encryption.ensure_encryption_config(DEFAULT, fresh)
    assert out.reasons == ("new secretbox key",)
    (key,) = encryption.load(fresh)
    assert (key.provider, key.name) == ("secretbox", "key1") and len(base64.b64decode(key.secret)) == 32
    old = PkiState(tmp_path / "old")  # a cluster made before secretbox was the default: left as it is
    encryption.ensure_encryption_config(AESCBC, old)
    assert encryption.ensure_encryption_config(DEFAULT, old).action == "kept"
    with pytest.raises(HardwayError, match=r"'aescbc'.*'secretbox'.*invoke rotate-encryption-key"):
        encryption.ensure_encryption_config(SECRETBOX, old)


def test_keys_render_and_parse_in_order_and_never_show_their_secret():
    a = encryption.new_key("aescbc")
    b = encryption.new_key("secretbox", [a])
    c = encryption.new_key("secretbox", [a, b])
    assert (a.name, b.name, c.name) == ("key1", "key2", "key3")
    data = encryption.render_keys([b, c, a])
    providers = yaml.safe_load(data)["resources"][0]["providers"]
    assert [next(iter(p)) for p in providers] == ["secretbox", "aescbc", "identity"]
    assert [k["name"] for k in providers[0]["secretbox"]["keys"]] == ["key2", "key3"]
    assert encryption.parse(data, "x") == [b, c, a]
    assert b.secret not in repr(b) and b.prefix == b"k8s:enc:secretbox:v1:key2:"
    assert encryption.render("aescbc", base64.b64decode(a.secret)) == encryption.render_keys(
        [encryption.Key("aescbc", "key1", a.secret)])


def test_a_secretbox_key_must_be_32_bytes_and_identity_never_first(tmp_path):
    short = encryption.render_keys([encryption.Key("secretbox", "key1", base64.b64encode(b"x" * 16).decode())])
    with pytest.raises(HardwayError, match="key 'key1' is not 32 bytes"):
        encryption.parse(short, "cfg")
    doc = yaml.safe_load(encryption.render_keys([encryption.new_key("secretbox")]))
    doc["resources"][0]["providers"].reverse()
    with pytest.raises(HardwayError, match="identity first: Secrets are stored unencrypted"):
        encryption.parse(yaml.safe_dump(doc).encode(), "cfg")
