"""Pipelines: end-to-end runs composed of the layers below (the family sweep and the demo)."""
