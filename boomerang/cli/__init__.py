"""The ``boomerang`` command line. Each module here registers its commands with ``register(app)``."""
