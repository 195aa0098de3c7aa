"""The plugins bundled with alertmail (installed as ``alertmail.plugins``).

Each module is registered through the same pluggy call a third-party plugin uses.
"""
