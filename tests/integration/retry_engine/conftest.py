"""The batch engine's rig (`engine_support.rig`) for every test in this folder."""

from tests.integration.retry_engine.engine_support import rig

__all__ = ["rig"]
