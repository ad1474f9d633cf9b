"""Serving a whole family from one process over an OpenAI-compatible HTTP API (``boomerang serve``).

``members`` (member names), ``sampling`` (sampling and stop strings), ``engine`` (the one generation thread),
``router`` (latency-budget routing of ``auto``), ``protocol`` (request validation, response shapes), ``app`` (the
Starlette application, with the playground page of ``static/`` at ``/``) and ``server`` (``FamilyServer``: all of it
together, run with uvicorn, shut down gracefully).
"""
