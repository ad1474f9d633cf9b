"""Serving a whole family from one process over an OpenAI-compatible HTTP API (``boomerang serve``).

``members`` (member names), ``sampling`` (sampling and stop strings), ``engine`` (the one generation thread),
``router`` (latency-budget routing of ``auto``), ``protocol`` (request validation, response shapes), ``app`` (the
Starlette application) and ``server`` (``FamilyServer``: all of it together, run with uvicorn).
"""
