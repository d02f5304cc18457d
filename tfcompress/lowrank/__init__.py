"""Low-rank factorizations of dense and conv layers."""
