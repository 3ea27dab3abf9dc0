"""The tuning service on the driver: job specs, search spaces, the Ray Tune + Optuna driver, storage, CLI.

Never imports torch at module level.
"""

__version__ = "0.1.0"
