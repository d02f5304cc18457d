"""Typed QuantConfig, op-keyed quantizers and the eightbit / weights graph builders."""
