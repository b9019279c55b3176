"""API settings (pydantic-settings): read from IMAGEFINDER_* environment variables, or passed in.

Environment variables (all optional):

    IMAGEFINDER_INDEX               index directory (default: the built-in sample, built on first use)
    IMAGEFINDER_MAX_UPLOAD_BYTES    largest accepted image upload / URL download (default 20 MB)
    IMAGEFINDER_MAX_PIXELS          largest accepted image, width x height (default 64 million)
    IMAGEFINDER_ALLOW_PRIVATE_URLS  1/true/yes lets {"url": ...} reach localhost and private
                                    networks (for a server used only on one's own machine; off)
    IMAGEFINDER_CORS_ORIGINS        comma-separated origins whose pages may call the API from a
                                    browser ("*" for any; default: the web front-end on :5000)
    IMAGEFINDER_FETCH_TIMEOUT       seconds per network operation when fetching a URL (default 10)
    IMAGEFINDER_SEARCH_CONCURRENCY  searches computed at once (default: one per CPU core); others
                                    wait their turn in arrival order
    IMAGEFINDER_MODEL_THREADS       onnxruntime threads per query (default 1; 0 = one per core)
    IMAGEFINDER_FETCH_WORKERS       URL downloads at once (default 8), in their own threads; up to
                                    as many more wait, the rest get 503
    IMAGEFINDER_FETCH_PER_HOST      URL downloads at once from one host (default 4); more get 429
    IMAGEFINDER_HEADER_TIMEOUT      seconds a client has to send a request's headers (default 10)
    IMAGEFINDER_BODY_TIMEOUT        seconds a client has to send a request's body (default 60)
    IMAGEFINDER_PUBLIC_URL          base of the thumbnail/image URLs in responses (e.g.
                                    https://img.example.org); default: URLs relative to the server
    IMAGEFINDER_API_TOKEN           when set, every change to the index (POST /images, DELETE ...)
                                    needs `Authorization: Bearer <token>`; unset: changes are
                                    accepted only from this machine (see imagefinder.access)
    IMAGEFINDER_READ_ONLY           1/true/yes refuses every change to the index (403); off
    IMAGEFINDER_MAX_FILES, IMAGEFINDER_PRELOAD_MODEL, IMAGEFINDER_RELOAD_INTERVAL: see the fields

`Settings()` reads the environment for every field not given; `Settings.from_env(mapping)` reads
a mapping instead of os.environ. A value that cannot be used raises SettingsError naming the
variable. Text is parsed by our own rules (not pydantic's), so the accepted spellings and the
messages stay those the README documents.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from ..errors import ImageFinderError
from ..ingest.decode import MAX_PIXELS

ENV_PREFIX = "IMAGEFINDER_"
INDEX_VAR = "IMAGEFINDER_INDEX"
MB = 1024 * 1024
MULTIPART_ROOM = 64 * 1024  # multipart headers and form fields around the image
DEFAULT_CORS = ("http://127.0.0.1:5000", "http://localhost:5000")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ImageFinderError, ValueError):
    """A setting with a value that cannot be used; the message names the variable."""


def _int(minimum: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(float(raw))
        except ValueError:
            raise ValueError(f"{name}={raw!r}: expected a whole number") from None
        if value < minimum:
            raise ValueError(f"{name}={raw!r}: must be at least {minimum}")
        return value
    return parse


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be positive")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _origins(name: str, raw: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in raw.split(",") if o.strip())


def _public_url(name: str, raw: str) -> str:
    if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", raw):
        raise ValueError(f"{name}={raw!r}: expected an http(s) URL such as https://images.example.org")
    return raw.rstrip("/")
def _token(name: str, raw: str) -> str | None:
    token = raw.strip()
    if not token:
        return None
    if not all(33 <= ord(ch) < 127 for ch in token):
        raise ValueError(f"{name}: use printable ASCII without spaces (it is sent in an HTTP header)")
    return token


def _index(name: str, raw: str) -> Path:
    return Path(raw).expanduser()


# How each field's text (from the environment) becomes a value; blank numbers keep the default.
_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "index_dir": _index, "max_upload_bytes": _int(1), "max_pixels": _int(1), "max_files": _int(1),
    "search_concurrency": _int(0), "model_threads": _int(0), "fetch_timeout": _seconds,
    "reload_interval": _seconds, "allow_private_urls": _bool, "preload_model": _bool, "cors_origins": _origins,
    "fetch_workers": _int(1), "fetch_per_host": _int(1), "header_timeout": _seconds, "body_timeout": _seconds,
    "public_url": _public_url,
    "api_token": _token, "read_only": _bool,
}
_BLANK_IS_DEFAULT = {"index_dir", "max_upload_bytes", "max_pixels", "max_files", "search_concurrency",
                     "model_threads", "fetch_timeout", "reload_interval", "fetch_workers", "fetch_per_host",
                     "header_timeout", "body_timeout", "public_url"}


def env_name(field: str) -> str:
    return INDEX_VAR if field == "index_dir" else ENV_PREFIX + field.upper()


def settings_error(exc: ValidationError) -> SettingsError:
    """One sentence per bad field, naming its environment variable."""
    parts = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        field = str(err["loc"][0]) if err.get("loc") else ""
        parts.append(msg if msg.startswith(ENV_PREFIX) or not field else f"{env_name(field)}: {msg}")
    return SettingsError("; ".join(parts))


class _MappingEnv(EnvSettingsSource):
    """The environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._mapping.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, validate_by_name=True,
                                      validate_by_alias=True)

    index_dir: Path | None = Field(None, validation_alias=INDEX_VAR)
    max_upload_bytes: int = 20 * MB
    max_pixels: int = 64_000_000
    allow_private_urls: bool = False
    cors_origins: Annotated[tuple[str, ...], NoDecode] = DEFAULT_CORS
    fetch_timeout: float = 10.0
    max_files: int = 10  # images per POST /images request
    preload_model: bool = True  # load the model at start-up, not on the first query
    reload_interval: float = 1.0  # seconds between checks for index updates made by other processes
    search_concurrency: int = 0  # searches computed at once (0: one per CPU core); the rest queue in order
    model_threads: int = 1  # onnxruntime threads per query (0: one per CPU core)
    fetch_workers: int = 8  # URL downloads at once, in their own threads (not the request thread pool)
    fetch_per_host: int = 4  # URL downloads at once from one host name
    header_timeout: float = 10.0  # seconds to send a request's headers; then the connection is closed
    body_timeout: float = 60.0  # seconds to send a request's body; then 408
    public_url: str | None = None  # base of result URLs; None: relative URLs (never the client's Host header)
    api_token: SecretStr | None = None  # writes need it as a Bearer token (SecretStr: never in logs or repr)
    read_only: bool = False  # refuse every write
    read_only_reason: str = "the server was started with IMAGEFINDER_READ_ONLY=1"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise settings_error(exc) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default os.environ) alone: fields it lacks keep their defaults."""
        values = _MappingEnv(cls, os.environ if env is None else env)()
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise settings_error(exc) from None

    @field_validator("*", mode="before")
    @classmethod
    def _parse_text(cls, value: Any, info: ValidationInfo) -> Any:
        field = info.field_name or ""
        if not isinstance(value, str) or field not in _PARSERS:
            return value
        if field in _BLANK_IS_DEFAULT and not value.strip():
            raise PydanticUseDefault()
        return _PARSERS[field](env_name(field), value.strip() if field != "allow_private_urls" else value)

    @property
    def token(self) -> str | None:
        return self.api_token.get_secret_value() if self.api_token is not None else None

    @property
    def max_body_bytes(self) -> int:
        """Whole request body: the image plus room for multipart headers and form fields."""
        return self.max_upload_bytes + MULTIPART_ROOM

    @property
    def pixel_limit(self) -> int:
        """The largest image accepted, in pixels: what /stats reports and every 413 quotes."""
        return min(self.max_pixels, MAX_PIXELS)

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (settings are frozen: one object per server)."""
        values = {**self.model_dump(), **changes}
        if "api_token" not in changes:  # model_dump masks secrets: carry the value itself
            values["api_token"] = self.api_token
        return self.model_validate(values)
