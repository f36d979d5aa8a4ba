"""Iceberg table schemas for the catalog (namespace `lucid`). Lookups by session prune on a
bucket partition of session_id; rows are sorted by (session_id, seq)."""

from __future__ import annotations

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import BucketTransform, IdentityTransform
from pyiceberg.types import BooleanType, IntegerType, LongType, NestedField, StringType, TimestamptzType

NAMESPACE = "lucid"
CHUNKS = f"{NAMESPACE}.chunks"
SESSIONS = f"{NAMESPACE}.sessions"
INSIGHT = f"{NAMESPACE}.session_insight"
BUCKETS = 16

CHUNKS_SCHEMA = Schema(
    NestedField(1, "session_id", StringType(), required=True),
    NestedField(2, "seq", LongType(), required=True),
    NestedField(3, "raw_sha256", StringType(), required=True),
    NestedField(4, "envelope_sha256", StringType(), required=True),
    NestedField(5, "raw_size", LongType(), required=True),
    NestedField(6, "stored_size", LongType(), required=True),
    NestedField(7, "compressed", BooleanType(), required=True),
    NestedField(8, "key_version", IntegerType(), required=True),
    NestedField(9, "envelope_uri", StringType(), required=True),
    NestedField(10, "duration_ms", LongType(), required=True),
    NestedField(11, "recorded_at", TimestamptzType(), required=True),
    NestedField(12, "stored_at", TimestamptzType(), required=True),
    identifier_field_ids=[1, 2],
)

SESSIONS_SCHEMA = Schema(
    NestedField(1, "session_id", StringType(), required=True),
    NestedField(2, "name", StringType(), required=True),
    NestedField(3, "manifest_version", IntegerType(), required=True),
    NestedField(4, "chunk_count", LongType(), required=True),
    NestedField(5, "raw_bytes", LongType(), required=True),
    NestedField(6, "stored_bytes", LongType(), required=True),
    NestedField(7, "duration_ms", LongType(), required=True),
    NestedField(8, "merkle_root", StringType(), required=True),
    NestedField(9, "manifest_uri", StringType(), required=True),
    NestedField(10, "manifest_sha256", StringType(), required=True),
    NestedField(11, "signing_key_id", StringType(), required=True),
    NestedField(12, "encoder", StringType(), required=False),
    NestedField(13, "started_at", TimestamptzType(), required=False),
    NestedField(14, "stopped_at", TimestamptzType(), required=False),
    NestedField(15, "sealed_at", TimestamptzType(), required=True),
    NestedField(16, "deleted_at", TimestamptzType(), required=False),
    identifier_field_ids=[1, 3],
)


# issue 15: what an analyst queries about what happened inside recordings. Counts and times only,
# never screen content (the text and thumbnails are sealed per chunk under the session's data key).
INSIGHT_SCHEMA = Schema(
    NestedField(1, "session_id", StringType(), required=True),
    NestedField(2, "derived_at", TimestamptzType(), required=True),
    NestedField(3, "chunks_derived", LongType(), required=True),
    NestedField(4, "recorded_seconds", LongType(), required=True),
    NestedField(5, "active_seconds", LongType(), required=True),
    NestedField(6, "idle_seconds", LongType(), required=True),  # in idle spans of 5 s or more
    NestedField(7, "idle_spans", LongType(), required=True),
    NestedField(8, "scene_changes", LongType(), required=True),
    NestedField(9, "text_lines", LongType(), required=True),
    NestedField(10, "text_seconds", LongType(), required=True),  # seconds in which a line appeared
    NestedField(11, "thumbnails", LongType(), required=True),
    NestedField(12, "indexed_chunks", LongType(), required=True),  # chunks in the keyed search index
    NestedField(13, "activity_version", StringType(), required=True),
    NestedField(14, "thumbnails_version", StringType(), required=True),
    NestedField(15, "text_version", StringType(), required=True),
    identifier_field_ids=[1],
)


def _by_session(schema: Schema) -> tuple[PartitionSpec, SortOrder]:
    sid = schema.find_field("session_id").field_id
    spec = PartitionSpec(
        PartitionField(source_id=sid, field_id=1000, transform=BucketTransform(BUCKETS), name="session_bucket")
    )
    sort_fields = [SortField(source_id=sid, transform=IdentityTransform())]
    if "seq" in schema.column_names:
        sort_fields.append(SortField(source_id=schema.find_field("seq").field_id, transform=IdentityTransform()))
    return spec, SortOrder(*sort_fields)


TABLES = {CHUNKS: CHUNKS_SCHEMA, SESSIONS: SESSIONS_SCHEMA, INSIGHT: INSIGHT_SCHEMA}


def layout(table: str) -> tuple[Schema, PartitionSpec, SortOrder]:
    schema = TABLES[table]
    return (schema, *_by_session(schema))
