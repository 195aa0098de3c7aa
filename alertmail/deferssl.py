"""Start asyncio without the ssl module; hand it over the moment anything imports ssl.

``import asyncio`` imports ``ssl``, and ``ssl`` brings up OpenSSL: about 4 MB of the idle
agent's RSS (bench/agent_idle.py), paid even when every mail goes into the pickup folder
and nothing ever speaks TLS. asyncio itself is written to run without ssl (Python may be
built without it): each module that uses it does ``try: import ssl / except ImportError:
ssl = None``. :func:`import_asyncio` imports asyncio that way, then watches for the first
real ``import ssl`` (a transport opening STARTTLS, the relay's TLS listener, a plugin) and
binds the module into asyncio right after it loads, before the importer gets it back. From
then on asyncio is exactly what a normal import would have made; tests/test_deferssl.py
compares the two, name by name, on the Python it runs on.

Only ``alertmail run`` uses this, and only when asyncio is not imported yet.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

# Module-level names sslproto derives from ssl at import time (Python 3.11-3.13). Any other
# asyncio module holds only the ``ssl`` name itself, which _bind sets wherever it is None.
_DERIVED = {
    "asyncio.sslproto": {"SSLAgainErrors": lambda ssl: (ssl.SSLWantReadError, ssl.SSLSyscallError)},
}


def _bind(ssl: ModuleType) -> None:
    """Give every asyncio module that imported without ssl the real module (and what it derives from it)."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "asyncio" or name.startswith("asyncio.")):
            continue
        if "ssl" in vars(module) and vars(module)["ssl"] is None:
            setattr(module, "ssl", ssl)  # noqa: B010  # the name is not the module's declared API
        for attr, make in _DERIVED.get(name, {}).items():
            if attr not in vars(module):
                setattr(module, attr, make(ssl))


class _BindAfterLoad(importlib.abc.Loader):
    """ssl's own loader, with _bind run once the module has executed."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        # Put the real loader back, so the module looks as if imported the usual way.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        _bind(module)


class _SslWatcher(importlib.abc.MetaPathFinder):
    """Answers only for the first import of ``ssl``, then takes itself off ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "ssl":
            return None
        _unwatch()
        spec = importlib.util.find_spec("ssl")
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _BindAfterLoad(spec.loader)
        return spec


def _unwatch() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _SslWatcher)]


def import_asyncio() -> bool:
    """Import asyncio with ssl deferred; True if deferred, False if asyncio or ssl was already there."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError, as on a build without it
    try:
        import asyncio
        import asyncio.base_events
        import asyncio.selector_events
        import asyncio.sslproto  # noqa: F401
    finally:
        del sys.modules["ssl"]
    sys.meta_path.insert(0, _SslWatcher())
    return True


def deferred() -> bool:
    """True while asyncio runs without ssl (nothing has imported it yet)."""
    return any(isinstance(finder, _SslWatcher) for finder in sys.meta_path)
