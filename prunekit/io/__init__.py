"""Files in and out: embedding sources and their formats, the scan cache, atomic writes,
provenance attributes, ids. Nothing here computes a score."""
