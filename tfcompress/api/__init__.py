"""The public API: each job as one function with typed options and a typed result (see tfcompress/__init__.py)."""
