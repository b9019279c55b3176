"""The web page's settings (pydantic-settings), read from the environment:

    IMAGEFINDER_API_URL           the API the page searches with (default http://127.0.0.1:8000)
    IMAGEFINDER_MAX_UPLOAD_BYTES  the API's upload cap, so the page refuses bigger bodies itself
                                  (default 20 MB; a value that is not a number keeps the default,
                                  the API itself reports it)
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024  # the API's default
MULTIPART_ROOM = 64 * 1024  # multipart headers and form fields around the image, as the API allows


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEFINDER_", frozen=True)

    api_url: str = DEFAULT_API_URL
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD

    @field_validator("api_url", mode="before")
    @classmethod
    def _blank_url(cls, value: Any) -> Any:
        return value or DEFAULT_API_URL

    @field_validator("max_upload_bytes", mode="before")
    @classmethod
    def _lenient_int(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return int(float(value.strip()))
        except ValueError:
            return DEFAULT_MAX_UPLOAD

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes + MULTIPART_ROOM
