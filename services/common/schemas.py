"""Request bodies shared by the gateway and the services behind it (validated once, at the edge,
and again by the owner of the data)."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

LABEL_KEY = re.compile(r"^[A-Za-z0-9_.\-/]{1,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatternSource(Strict):
    """FFmpeg's synthetic test pattern (lavfi), paced to real time: demos and tests."""
    kind: Literal["testsrc"] = "testsrc"
    pattern: Literal["testsrc", "testsrc2", "smptebars", "rgbtestsrc"] = "testsrc"


class X11Source(Strict):
    """An X display (e.g. an xrdp session's) captured with x11grab, cursor included."""
    kind: Literal["x11"]
    display: str = Field(..., pattern=r"^[A-Za-z0-9._\-]*:\d{1,4}(\.\d{1,2})?$", examples=[":10.0"])
    offset_x: int = Field(0, ge=0, le=16384)
    offset_y: int = Field(0, ge=0, le=16384)
    capture_width: int | None = Field(None, ge=16, le=16384, description="default: the video width")
    capture_height: int | None = Field(None, ge=16, le=16384, description="default: the video height")
    draw_mouse: bool = True


class UrlSource(Strict):
    """Anything FFmpeg opens: a file under LUCID_URL_FILE_ROOTS, http(s)://, rtsp://, rtmp://, srt://."""
    kind: Literal["url"]
    url: str = Field(..., min_length=1, max_length=4096)
    realtime: bool = Field(True, description="read files at their own speed (like ffmpeg -re)")


class PushSource(Strict):
    """An external agent uploads the chunks itself: PUT /v1/sessions/{id}/chunks/{seq}."""
    kind: Literal["push"]


Source = Annotated[Union[PatternSource, X11Source, UrlSource, PushSource], Field(discriminator="kind")]


class Video(Strict):
    width: int = Field(1280, ge=64, le=3840, multiple_of=2)
    height: int = Field(720, ge=64, le=2160, multiple_of=2)
    fps: int = Field(30, ge=1, le=60)
    encoders: list[Literal["libx264", "h264_v4l2m2m", "h264_nvenc"]] | None = Field(
        None, min_length=1, description="preference order; default LUCID_ENCODERS "
                                        "(h264_v4l2m2m, h264_nvenc, libx264): the first that opens is used")


class CreateSession(Strict):
    name: str = Field(..., min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    source: Source = Field(default_factory=PatternSource)
    video: Video = Field(default_factory=Video)
    chunk_seconds: int = Field(10, ge=1, le=600)
    retention_days: int | None = Field(None, ge=1, le=36500)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not LABEL_KEY.match(k):
                raise ValueError(f"label key {k!r} must match {LABEL_KEY.pattern}")
            if len(val) > 256:
                raise ValueError(f"label {k!r} value is longer than 256 characters")
        return v


class Transition(Strict):
    event: Literal["start", "pause", "resume", "stop", "finalize", "seal", "fail", "retry", "delete"]
    actor: str = Field("system", max_length=200)
    reason: str | None = Field(None, max_length=2000)
    expected_chunks: int | None = Field(None, ge=0)
    encoder: str | None = Field(None, max_length=100)


class RegisterChunk(Strict):
    seq: int = Field(..., ge=0)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    size: int = Field(..., ge=0)
    duration_ms: int = Field(0, ge=0)
    frames: int = Field(0, ge=0)
    path: str = Field(..., min_length=1, max_length=4096)


class ChunkStored(Strict):
    envelope_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    stored_size: int = Field(..., ge=0)
    compressed: bool


class ManifestSummary(Strict):
    version: int = Field(..., ge=1)
    merkle_root: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    manifest_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")


class VerificationSummary(Strict):
    status: Literal["verified", "failed", "shredded"]
    problems: int = Field(..., ge=0)
    at: str = Field(..., max_length=40)


class AuditNote(Strict):
    event: Literal["reprocess"]
    actor: str = Field(..., max_length=200)
    detail: dict = Field(default_factory=dict)
