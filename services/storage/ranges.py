"""HTTP byte ranges (one range per request, as players ask)."""

from __future__ import annotations

from services.common.errors import ApiError


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b` range as (start, end inclusive); None for the whole body; 416 if unsatisfiable."""
    if not header:
        return None
    unsatisfied = {"Content-Range": f"bytes */{size}"}  # RFC 9110 15.5.17: the current length
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ApiError(416, "range_not_satisfiable", "only one bytes=start-end range is supported", headers=unsatisfied)
    a, _, b = spec.strip().partition("-")
    try:
        if a == "":
            n = int(b)
            start, end = max(0, size - n), size - 1
        else:
            start, end = int(a), (int(b) if b else size - 1)
    except ValueError:
        raise ApiError(416, "range_not_satisfiable", f"malformed range {header!r}", headers=unsatisfied) from None
    end = min(end, size - 1)
    if start > end or start >= size:
        raise ApiError(416, "range_not_satisfiable", f"range {header!r} is outside 0-{size - 1}", headers=unsatisfied)
    return start, end
