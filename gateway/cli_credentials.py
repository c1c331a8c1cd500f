"""The credentials file `smsgw login` writes and the client commands read (0600 JSON).

It holds the access and refresh tokens of one sign-in. A command whose access token is about
to expire refreshes it first and rewrites the file, so a user signs in once per refresh TTL.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.private_files import ensure_private_dir, write_private_file
from smsgw.v1 import auth_pb2

__all__ = ["StoredCredentials", "DEFAULT_CREDENTIALS", "credentials_path"]

DEFAULT_CREDENTIALS = Path("smsgw-data/credentials.json")
_REFRESH_MARGIN = timedelta(seconds=60)


def credentials_path(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("SMSGW_CREDENTIALS")
    return Path(env) if env else DEFAULT_CREDENTIALS


@dataclass
class StoredCredentials:
    server: str
    username: str
    access_token: str
    refresh_token: str
    access_expires_at: str  # ISO 8601 UTC
    refresh_jti: str

    @classmethod
    def from_pair(cls, server: str, username: str, pair: auth_pb2.TokenPair) -> StoredCredentials:
        return cls(
            server=server,
            username=username,
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            access_expires_at=pair.access_expires_at.ToDatetime(tzinfo=UTC).isoformat(),
            refresh_jti=pair.refresh_jti,
        )

    @classmethod
    def load(cls, path: Path) -> StoredCredentials:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        ensure_private_dir(path.parent)
        write_private_file(path, json.dumps(asdict(self), indent=2))

    def access_expiring(self) -> bool:
        return datetime.fromisoformat(self.access_expires_at) - _REFRESH_MARGIN <= datetime.now(UTC)
