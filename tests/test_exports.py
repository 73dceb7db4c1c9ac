"""`bridge.__all__` names exactly what the package exports, and nothing is missing."""

import bridge


def test_all_names_exist_and_are_sorted():
    assert list(bridge.__all__) == sorted(bridge.__all__)
    for name in bridge.__all__:
        assert hasattr(bridge, name), name


def test_no_public_name_left_out_of_all():
    public = {
        name
        for name, value in vars(bridge).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("bridge")
    }
    assert public <= set(bridge.__all__)
