"""What happened inside a recording, derived from its stored chunks: activity, thumbnails, screen
text (OCR) and the keyed search index. Everything here is sealed under the session's data key."""
