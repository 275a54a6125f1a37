"""router_stream.client exposes exactly its ``__all__`` (as httpx's tests/test_exported_members.py)."""

import router_stream.client as client


def test_all_names_are_exported_and_documented():
    assert sorted(client.__all__) == client.__all__
    for name in client.__all__:
        member = getattr(client, name)
        assert getattr(member, "__doc__", None), f"{name} has no docstring"


def test_every_public_attribute_is_in_all():
    public = {n for n in dir(client) if not n.startswith("_")}
    assert public == set(client.__all__)


def test_modules_behind_the_names_are_private():
    for name in client.__all__:
        module = getattr(client, name).__module__
        assert module.startswith(("router_stream.client._", "router_stream.core.")), (name, module)
