"""The delivery tests' real parts (a loopback webhook receiver, a private redis-server),
shared with the operations tests."""

from tests.notifications.conftest import private_redis, receiver

__all__ = ["private_redis", "receiver"]
