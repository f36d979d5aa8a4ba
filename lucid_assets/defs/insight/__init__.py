"""Issue 15: what happened inside a recording, as session-partitioned assets downstream of the stored chunks."""
