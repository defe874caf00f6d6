"""Settings: what the channel policies file may say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atp_service.config import Settings


def settings_with_channels(tmp_path: Path, channels: object) -> Settings:
    path = tmp_path / "channels.json"
    path.write_text(json.dumps(channels))
    return Settings(_env_file=None, channels_file=path)  # type: ignore[call-arg]


def test_a_channels_file_giving_a_channel_no_sites_is_refused_saying_what_to_write(
    tmp_path: Path,
) -> None:
    settings = settings_with_channels(tmp_path, {"web": {"sites": []}})

    with pytest.raises(ValueError, match="at least one site"):
        settings.load_channel_policies()


def test_a_channels_file_may_name_sites_or_leave_them_to_every_site(tmp_path: Path) -> None:
    settings = settings_with_channels(tmp_path, {"web": {"sites": ["DC-1"]}, "b2b": {}})

    policies = settings.load_channel_policies()

    assert policies["web"].sites == ("DC-1",)
    assert policies["b2b"].sites is None
