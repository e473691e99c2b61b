"""GitHub tokens at rest: Fernet keys from settings or a key file, rotation newest first."""

from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError, PermanentError
from daemon.secrets import SecretBox, load_secret_box


def test_a_key_file_is_made_once_with_mode_0600(tmp_path):
    settings = Settings(data_dir=tmp_path)
    box = load_secret_box(settings)
    path = tmp_path / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = box.encrypt("gho_secret")
    assert b"gho_secret" not in token
    assert load_secret_box(settings).decrypt(token) == "gho_secret"  # same key next start


def test_rotation_keeps_old_secrets_readable_and_rewrites_them_with_the_newest_key(tmp_path):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = SecretBox([old]).encrypt("gho_1")
    rotated = load_settings(env={"AGENTD_SECRET_KEYS": f"{new},{old}", "AGENTD_DATA_DIR": str(tmp_path)})
    box = load_secret_box(rotated)
    assert box.decrypt(before) == "gho_1"
    again = box.rotate(before)
    assert SecretBox([new]).decrypt(again) == "gho_1"
    with pytest.raises(PermanentError, match="cannot be decrypted"):
        SecretBox([new]).decrypt(before)


def test_a_configured_key_file_must_exist_and_hold_keys(tmp_path):
    missing = Settings(data_dir=tmp_path, secret_key_file=tmp_path / "nope.key")
    with pytest.raises(ConfigError, match="not found"):
        load_secret_box(missing)
    (tmp_path / "keys").write_text("# newest first\n" + Fernet.generate_key().decode() + "\n")
    assert load_secret_box(Settings(data_dir=tmp_path, secret_key_file=tmp_path / "keys"))
    with pytest.raises(ConfigError, match="not a Fernet key"):
        SecretBox(["short"])
    assert "hidden" in repr(SecretBox([Fernet.generate_key()]))
