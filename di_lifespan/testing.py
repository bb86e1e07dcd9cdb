"""Testing kit: run the whole app in a test, with any resource swapped for a fake.

async with TestClient(app, overrides=[FakeResources()]) as client:
    await client.publish("input_data", {...})       # returns once handled
    assert client.published("predictions") == [{"species": "setosa"}]
"""

from ._testing import Override, TestClient, override

__all__ = ["Override", "TestClient", "override"]
