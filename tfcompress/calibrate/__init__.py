"""Image reading, streaming range collection, calibrators and the range cache."""
