"""Deliberately broken: a plugin whose import fails must not stop dva from loading the others."""

import dva_this_module_does_not_exist  # noqa: F401
