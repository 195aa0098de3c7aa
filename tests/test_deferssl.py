"""asyncio started without ssl (alertmail.deferssl) is, once ssl loads, what a normal import makes.

Each check runs in a fresh interpreter: the test process imported asyncio long ago.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.certs import make_tls_files
from tests.relay_peers import REPO

# Every module-level name of every asyncio module, described by what it is: a module or a
# class by its qualified name, a tuple of classes by theirs, anything else by its type.
DESCRIBE = """
import json, sys, types

def describe(value):
    if isinstance(value, types.ModuleType):
        return "module " + value.__name__
    if isinstance(value, type):
        return "class " + value.__module__ + "." + value.__qualname__
    if isinstance(value, tuple) and value and all(isinstance(v, type) for v in value):
        return "classes " + ",".join(v.__module__ + "." + v.__qualname__ for v in value)
    return "a " + type(value).__name__

snapshot = {
    name: {attr: describe(value) for attr, value in vars(module).items() if not attr.startswith("__")}
    for name, module in sorted(sys.modules.items())
    if module is not None and (name == "asyncio" or name.startswith("asyncio."))
}
print(json.dumps(snapshot))
"""


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_asyncio_gets_ssl_and_what_it_derives_from_it_as_soon_as_ssl_is_imported():
    deferred = _python(
        textwrap.dedent("""
        import sys
        from alertmail import deferssl
        assert deferssl.import_asyncio() is True
        assert "ssl" not in sys.modules and "_ssl" not in sys.modules, "OpenSSL loaded with asyncio"
        import asyncio.sslproto
        assert asyncio.sslproto.ssl is None and deferssl.deferred()
        import ssl  # as a transport or plugin would, at any later time
        assert asyncio.sslproto.ssl is ssl and not deferssl.deferred()
        assert ssl.__loader__.__class__.__name__ != "_BindAfterLoad"
        """)
        + DESCRIBE
    )
    normal = _python("import asyncio, asyncio.sslproto, ssl\n" + DESCRIBE)
    got, want = json.loads(deferred), json.loads(normal)
    assert got.keys() == want.keys()
    for module in want:
        assert got[module] == want[module], module
    assert want["asyncio.sslproto"]["SSLAgainErrors"].startswith("classes ssl.")  # the check sees what it compares


def test_tls_and_starttls_work_on_a_loop_that_started_before_ssl_was_loaded(tmp_path):
    tls = make_tls_files(tmp_path)
    out = _python(
        textwrap.dedent(f"""
        import sys
        from alertmail import deferssl
        assert deferssl.import_asyncio()
        import asyncio

        async def main():
            import ssl  # loaded by the first session that needs it, the loop already running
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain({str(tls.cert)!r}, {str(tls.key)!r})
            client_ctx = ssl.create_default_context(cafile={str(tls.ca)!r})

            async def serve(reader, writer):
                line = await reader.readline()
                if line == b"STARTTLS\\n":
                    writer.write(b"GO\\n")
                    await writer.drain()
                    await writer.start_tls(server_ctx)
                    line = await reader.readline()
                writer.write(b"tls=" + str(writer.get_extra_info("ssl_object") is not None).encode() + b" " + line)
                await writer.drain()
                writer.close()

            plain = await asyncio.start_server(serve, "127.0.0.1", 0)
            secure = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
            replies = []
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", secure.sockets[0].getsockname()[1], ssl=client_ctx, server_hostname="localhost"
            )
            writer.write(b"direct\\n")
            replies.append((await reader.readline()).decode().strip())
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", plain.sockets[0].getsockname()[1])
            writer.write(b"STARTTLS\\n")
            assert await reader.readline() == b"GO\\n"
            await writer.start_tls(client_ctx, server_hostname="localhost")
            writer.write(b"upgraded\\n")
            replies.append((await reader.readline()).decode().strip())
            writer.close()
            print(" / ".join(replies))

        asyncio.run(asyncio.wait_for(main(), 20))
        """)
    )
    assert out.strip() == "tls=True direct / tls=True upgraded"


def test_nothing_is_deferred_once_asyncio_is_imported():
    import asyncio  # noqa: F401  # as any library may have done before `alertmail run` starts

    from alertmail import deferssl

    assert deferssl.import_asyncio() is False
    assert not deferssl.deferred()
