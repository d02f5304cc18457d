"""GraphDef wrapper, declarative op patterns, rewrites and the ordered pass list."""
