"""A TCP relay on loopback between clients and PostgreSQL that can lose a connection just after
the server has answered a COMMIT: the server committed, the client never hears it. That is what
a network failure at the wrong moment does, and the one case where a writer cannot know
whether its transaction landed.

    async with CommitCutter("127.0.0.1", 5432) as cutter:
        url = ...port=cutter.port...       # the client connects through the relay, without TLS
        cutter.arm()                       # the next COMMIT answered is the one cut
        ...
        await asyncio.wait_for(cutter.cut.wait(), WAIT_S)

The relay reads the client's side as PostgreSQL protocol messages (the untyped SSLRequest and
StartupMessage first, then a type byte and a length each), to find a simple Query "COMMIT"; it
copies the server's side through unread until the answer to that COMMIT (CommandComplete
"COMMIT") arrives, which it drops with the connection.
"""

from __future__ import annotations

import asyncio
import struct
from types import TracebackType

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_COMMIT_DONE = b"COMMIT\x00"  # CommandComplete's tag


class CommitCutter:
    """Relays 127.0.0.1:`port` to PostgreSQL at `host`:`server_port`; cuts one COMMIT's answer
    once armed."""

    def __init__(self, host: str, server_port: int) -> None:
        self._host = host
        self._server_port = server_port
        self._server: asyncio.Server | None = None
        self._armed = False
        self._relays: set[asyncio.Task[None]] = set()
        self.cut = asyncio.Event()  # set once a COMMIT's answer was dropped

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def arm(self) -> None:
        """Cut the connection that next sends COMMIT, once the server has answered it."""
        self.cut.clear()
        self._armed = True

    async def __aenter__(self) -> CommitCutter:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for relay in list(self._relays):
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        relay = asyncio.create_task(self._relay(client_in, client_out))
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection(self._host, self._server_port)
        commit_sent = asyncio.Event()
        upstream = asyncio.create_task(self._client_to_server(client_in, server_out, commit_sent))
        downstream = asyncio.create_task(self._server_to_client(server_in, client_out, commit_sent))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            upstream.cancel()
            downstream.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            for writer in (client_out, server_out):
                writer.close()

    async def _client_to_server(
        self,
        client_in: asyncio.StreamReader,
        server_out: asyncio.StreamWriter,
        commit_sent: asyncio.Event,
    ) -> None:
        """Copy the client's messages to the server, one whole message at a time."""
        try:
            while True:  # untyped: SSLRequest or GSSENCRequest, then StartupMessage
                length_bytes = await client_in.readexactly(4)
                body = await client_in.readexactly(struct.unpack("!I", length_bytes)[0] - 4)
                server_out.write(length_bytes + body)
                await server_out.drain()
                if struct.unpack_from("!I", body)[0] not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    break
            while True:
                header = await client_in.readexactly(5)
                body = await client_in.readexactly(struct.unpack_from("!I", header, 1)[0] - 4)
                if (
                    self._armed
                    and header[:1] == b"Q"
                    and body.strip(b"\x00; ").upper() == b"COMMIT"
                ):
                    self._armed = False
                    commit_sent.set()
                server_out.write(header + body)
                await server_out.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def _server_to_client(
        self,
        server_in: asyncio.StreamReader,
        client_out: asyncio.StreamWriter,
        commit_sent: asyncio.Event,
    ) -> None:
        """Copy the server's bytes to the client until the answer to a cut COMMIT arrives."""
        answer = b""
        try:
            while True:
                chunk = await server_in.read(65536)
                if not chunk:
                    return
                if commit_sent.is_set():
                    answer += chunk
                    if _COMMIT_DONE in answer:
                        self.cut.set()  # committed on the server; the client never hears it
                        return
                    continue
                client_out.write(chunk)
                await client_out.drain()
        except ConnectionError:
            return
