"""Stubs generated from ``protos/*.proto`` by ``protos/generate.py`` (committed; a test checks they are fresh)."""
