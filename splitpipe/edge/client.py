"""One ModelStreamInfer stream to a server: a bounded window, replies matched by id, reconnects.

:class:`StreamClient` runs on an asyncio event loop (``grpc.aio``). ``send`` waits for a free
slot of the window, remembers the frame and writes it; a reader task hands each reply to the
``on_reply`` callback with the time it arrived. When the server is not up yet, or the stream
breaks, the client reconnects with a doubling backoff on a fresh channel and resends, in order,
every frame whose reply had not arrived: no frame is lost, and each is answered once (a reply
for a frame no longer pending is dropped and counted).

A frame that can never be sent is not retried: one over the agent's own message limit is not
written at all, and one the server refuses as too large (gRPC ends the stream with
RESOURCE_EXHAUSTED, or, when the refusal races our write, with another status: then a frame
that was the largest unanswered one on :data:`TOO_LARGE_STRIKES` streams in a row that broke,
other than UNAVAILABLE, as a server or link that went away ends them) is answered with an
error reply naming the limit. While no frame has got through, such a
frame ends the client with a SplitpipeError: none will get through.

Requests and replies travel as bytes (no serializer): the agent builds requests itself
(:mod:`splitpipe.edge.wire`) and parses replies where it records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from splitpipe.edge.options import ClientOptions
from splitpipe.errors import SplitpipeError
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.inference import grpc_service_pb2_grpc as pb_grpc
from splitpipe.tls import is_handshake_failure

_LOGGER = logging.getLogger(__name__)

STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
#: streams that broke, in a row, while a frame was the largest unanswered on them, before the
#: frame is taken to be what breaks them (too large for the server) and not resent again
TOO_LARGE_STRIKES = 3
# gRPC's words when a message is over a limit: SERVER (our request) or CLIENT (its reply)
_TOO_LARGE = re.compile(r"(SERVER|CLIENT): Received message larger than max \((\d+) vs\. (\d+)\)")
_MIB = 1 << 20


@dataclass(eq=False, slots=True)
class Pending:
    """A frame sent (or waiting to be sent) whose reply has not arrived."""

    id: str
    data: bytes
    context: Any = None
    sent_at: float = 0.0  # perf_counter of the latest write
    stream: int = -1  # the stream it was last written to
    sends: int = 0
    strikes: int = 0  # streams that broke with it the largest unanswered frame on them
    refused: str | None = None  # why it can never be sent (it was answered with this error)


class StreamClient:
    """Streams requests to ``model`` at ``address`` with at most ``options.window`` unanswered.

    ``on_reply(pending, reply, arrived)`` runs on the event loop for each reply of a pending
    frame: ``reply`` is the parsed ModelStreamInferResponse, ``arrived`` its perf_counter.
    ``give_up_unsendable``: a frame that can never be sent (over a message limit) while no frame
    has got through ends the run; False where the caller has other exports to turn to.
    """

    def __init__(
        self,
        address: str,
        model: str,
        on_reply: Callable[[Pending, pb.ModelStreamInferResponse, float], None],
        options: ClientOptions | None = None,
        expected_inputs: list[tuple[str, str]] | None = None,
        more_models: dict[str, list[tuple[str, str]] | None] | None = None,
        give_up_unsendable: bool = True,
        expected_shapes: dict[str, dict[str, tuple[int | None, ...]]] | None = None,
    ) -> None:
        self.address = address
        self.model = model
        # every model the stream carries requests for, with the inputs we send it (None: unchecked)
        self.models: dict[str, list[tuple[str, str]] | None] = {model: expected_inputs, **(more_models or {})}
        # model -> input -> the shape we send (None: a free dimension); checked against ModelMetadata
        self.shapes = expected_shapes or {}
        self.options = options or ClientOptions()
        self.on_reply = on_reply
        self.give_up_unsendable = give_up_unsendable
        self.reconnects = 0  # streams opened after the first
        self.resent = 0  # frames written again after a stream broke
        self.duplicates = 0  # replies for frames no longer pending
        self.replies = 0  # replies matched to a pending frame
        self.server_limit: int | None = None  # the server's message limit, once it refused one
        self._pending: dict[str, Pending] = {}
        self._window = asyncio.Semaphore(self.options.window)
        self._write_lock = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._stream = 0
        self._connected = asyncio.Event()
        self._broken = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        tls = self.options.tls
        self._credentials = tls.credentials() if tls is not None else None

    # -- public ---------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def unanswered(self) -> tuple[Pending, ...]:
        """The frames written on the current stream and not answered yet, oldest first (a copy;
        any thread). Frames written on a stream that broke wait for their resend: not counted."""
        stream = self._stream
        return tuple(p for p in tuple(self._pending.values()) if p.stream == stream)

    @property
    def connected(self) -> bool:
        """A stream is open (False from a break until the reconnect succeeds)."""
        return self._connected.is_set() and self._failure is None

    async def start(self, abort: asyncio.Event | None = None) -> None:
        """Connect (waiting for the server with backoff) and open the stream. Raises
        SplitpipeError if the server does not serve the model, or no server answered within
        ``connect_timeout_s``; returns early, unconnected, once ``abort`` is set."""
        await self._connect(abort, first=True)
        if self._channel is None:
            return
        self._open_stream()
        self._supervisor = asyncio.create_task(self._supervise(), name="splitpipe-stream")

    async def send(self, frame_id: str, data: bytes, context: Any = None) -> None:
        """Wait for a window slot, then write the frame (it is resent after a reconnect until
        its reply arrives). A frame over a message limit is answered at once with an error
        reply, unsent; raises SplitpipeError if no frame has got through yet."""
        reason = self._over_limit(frame_id, len(data))
        if reason is not None:
            self._refuse(Pending(frame_id, data, context), reason)
            if self._failure is not None:
                raise self._failure
            return
        await self._window.acquire()
        if self._failure is not None:
            self._window.release()
            raise self._failure
        entry = Pending(frame_id, data, context)
        self._pending[frame_id] = entry
        self._empty.clear()
        await self._write(entry)

    async def drain(self, timeout: float | None, abort: asyncio.Event | None = None) -> bool:
        """Wait until every pending frame is answered; False if ``timeout`` or ``abort`` came first."""
        waits = [asyncio.ensure_future(self._empty.wait())]
        if abort is not None:
            waits.append(asyncio.ensure_future(abort.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self._failure is not None:
            raise self._failure
        return self._empty.is_set()

    def abandon(self) -> list[Pending]:
        """The frames still unanswered (they will not be); clears them."""
        left = list(self._pending.values())
        self._pending.clear()
        self._empty.set()
        return left

    async def close(self) -> None:
        """Half-close the stream, stop reconnecting, release the channel."""
        self._closing = True
        if self._call is not None:
            try:
                async with self._write_lock:
                    await self._call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._close_channel()

    # -- connection -----------------------------------------------------------------------------
    def _new_channel(self) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.address, options=self._channel_options())
        assert self.options.tls is not None
        options = self._channel_options() + self.options.tls.channel_options()
        return grpc.aio.secure_channel(self.address, self._credentials, options=options)

    def _channel_options(self) -> list[tuple[str, Any]]:
        o = self.options
        return [
            ("grpc.max_send_message_length", o.max_message_bytes),
            ("grpc.max_receive_message_length", o.max_message_bytes),
            ("grpc.keepalive_time_ms", int(o.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(o.keepalive_s * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            # a fresh channel per attempt already dials at once; keep gRPC's own redial short too
            ("grpc.initial_reconnect_backoff_ms", int(o.backoff_initial_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(o.backoff_max_s * 1000)),
        ]

    async def _close_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._call = self._channel, None, None
            await channel.close(grace=None)

    async def _connect(self, abort: asyncio.Event | None, first: bool = False) -> None:
        """Dial until ModelMetadata for our model answers; checks that it takes our inputs.
        On the ``first`` connection a failed TLS handshake is an error at once (certificates or
        names that do not fit); on reconnects it is retried like any other failure."""
        o = self.options
        delay = o.backoff_initial_s
        started = time.monotonic()
        attempts = 0
        while True:
            await self._close_channel()
            channel = self._new_channel()
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            attempts += 1
            try:
                metas = [
                    await stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=o.rpc_timeout_s)
                    for name in self.models
                ]
            except asyncio.CancelledError:
                await channel.close(grace=None)
                raise
            except grpc.aio.AioRpcError as exc:
                await channel.close(grace=None)
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                    raise SplitpipeError(f"server {self.address}: {exc.details()}") from None
                why = f"{exc.code().name}: {(exc.details() or '').splitlines()[0] if exc.details() else ''}"
                if first and is_handshake_failure(exc.details() or ""):
                    raise SplitpipeError(_tls_failure(self.address, exc.details() or "")) from None
                if "Socket closed" in why:
                    why += _closed_hint(self.options)
                waited = time.monotonic() - started
                if o.connect_timeout_s is not None and waited + delay > o.connect_timeout_s:
                    raise SplitpipeError(
                        f"server {self.address} did not answer within {o.connect_timeout_s:g} s ({why})"
                    ) from None
                if attempts == 1 or attempts % 10 == 0:
                    _LOGGER.warning(
                        "server %s not reachable (%s); retrying in %.1f s", self.address, why, delay
                    )
                if abort is not None:
                    try:
                        await asyncio.wait_for(abort.wait(), delay * random.uniform(0.8, 1.2))
                        return
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, o.backoff_max_s)
                continue
            for meta, (name, expected) in zip(metas, self.models.items(), strict=True):
                self._check_metadata(meta, expected, self.shapes.get(name))
            self._channel = channel
            if attempts > 1:
                _LOGGER.info("connected to %s after %d attempts", self.address, attempts)
            return

    def _check_metadata(
        self,
        meta: pb.ModelMetadataResponse,
        expected: list[tuple[str, str]] | None,
        shapes: dict[str, tuple[int | None, ...]] | None = None,
    ) -> None:
        if expected is None:
            return
        served = [(t.name, t.datatype) for t in meta.inputs]
        if sorted(served) != sorted(expected):
            raise SplitpipeError(
                f"server {self.address} serves {meta.name!r} with inputs {served}, but this export sends "
                f"{expected}; serve the same export directory"
            )
        # an export of the same name with other shapes (another --input-shape, say) would refuse
        # every frame: an error now, not a run of failed frames
        for t in meta.inputs:
            sent = (shapes or {}).get(t.name)
            if sent is None:
                continue
            takes = [None if d < 0 else d for d in t.shape]
            if len(takes) != len(sent) or any(
                a is not None and b is not None and a != b for a, b in zip(takes, sent, strict=True)
            ):
                show = ",".join("?" if d is None else str(d) for d in takes)
                mine = ",".join("?" if d is None else str(d) for d in sent)
                raise SplitpipeError(
                    f"server {self.address} serves {meta.name!r} with input {t.name!r} of shape [{show}], "
                    f"but this export sends [{mine}]; serve the same export directory"
                )

    def _open_stream(self) -> None:
        assert self._channel is not None
        self._stream += 1
        method = self._channel.stream_stream(STREAM_METHOD)  # bytes in, bytes out
        self._call = method()
        self._broken.clear()
        self._connected.set()

    async def _supervise(self) -> None:
        """Read replies; on a broken stream reconnect, resend what is unanswered, read on."""
        resend = False
        while True:
            # the reader runs before the resends: with flow control on both directions, writing a
            # full window without reading the replies could stall both ends
            reader = asyncio.create_task(self._read(self._call))
            broken = asyncio.create_task(self._broken.wait())
            try:
                if resend:
                    for entry in list(self._pending.values()):
                        sent_before = entry.sends > 0
                        if await self._write(entry) and sent_before:
                            self.resent += 1
                done, _ = await asyncio.wait({reader, broken}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # close() cancelled us: the reader must not outlive the channel
                reader.cancel()
                raise
            finally:
                broken.cancel()
            error: BaseException | None = None
            if reader in done:
                error = reader.exception()
                if error is None and self._closing:
                    return  # the server ended the stream after our half-close
            else:
                reader.cancel()
            if self._closing and not self._pending:
                return
            self._connected.clear()
            code, details = await _status(self._call)
            if error is not None:
                why = _describe(error)
            elif code not in (None, grpc.StatusCode.OK):
                why = f"{code.name}: {details.splitlines()[0] if details else ''}"
            else:
                why = "server ended the stream"
            self._refuse_too_large(why, code, details, self._stream)
            if self._failure is not None:
                return
            _LOGGER.warning(
                "stream to %s broke (%s); reconnecting, %d frame(s) to resend",
                self.address,
                why,
                len(self._pending),
            )
            try:
                await self._connect(None)
            except SplitpipeError as exc:
                self._fail(exc)
                return
            self.reconnects += 1
            self._open_stream()
            resend = True

    def _over_limit(self, frame_id: str, size: int) -> str | None:
        """Why a request of ``size`` bytes cannot be sent, or None."""
        own, server = self.options.max_message_bytes, self.server_limit
        if size > own:
            return (
                f"frame {frame_id} is {_size(size)}, over this agent's message limit of {_size(own)} "
                "(--max-message-mb)"
            )
        if server is not None and size > server:
            return (
                f"frame {frame_id} is {_size(size)}, over the server's message limit of {_size(server)} "
                "(splitpipe serve --max-message-mb)"
            )
        return None

    def _refuse(self, entry: Pending, reason: str) -> None:
        """``entry`` can never be sent: answer it with an error reply (not resent). While no
        frame has got through, none will: the client fails (unless ``give_up_unsendable`` is off)."""
        if entry.refused is not None:  # answered already (the run ended on another frame)
            return
        entry.refused = reason
        if self._pending.pop(entry.id, None) is not None:
            if not self._pending:
                self._empty.set()
            self._window.release()
        self._answer_error(entry, reason)
        if self.give_up_unsendable and not self.replies and self._failure is None:
            failure = SplitpipeError(
                f"{reason}; no frame got through: raise that limit, or send less (another split or codec)"
            )
            self._fail(failure)
            # the frames still waiting will get no reply either: they fail with the reason, not lost
            for other in list(self._pending.values()):
                other.refused = f"not sent: the run ended ({failure})"
                del self._pending[other.id]
                self._answer_error(other, other.refused)

    def _answer_error(self, entry: Pending, message: str) -> None:
        """Hand ``entry`` to ``on_reply`` as failed with ``message``, as the server's errors come."""
        reply = pb.ModelStreamInferResponse(error_message=message)
        reply.infer_response.id = entry.id
        self.on_reply(entry, reply, time.perf_counter())

    def _refuse_too_large(self, why: str, code: Any, details: str, stream: int) -> None:
        """After the stream ``stream`` broke (``why``; ``code``, ``details``: its final status):
        fail the frames that broke it by being too large."""
        written = [p for p in self._pending.values() if p.stream == stream]
        match = _TOO_LARGE.search(why) or _TOO_LARGE.search(details)  # the reader's or the call's
        if match and match[1] == "SERVER":
            limit = int(match[3])
            self.server_limit = min(limit, self.server_limit or limit)
            for entry in list(self._pending.values()):
                reason = self._over_limit(entry.id, len(entry.data))
                if reason is not None:
                    self._refuse(entry, reason)
            return
        if match and written:  # a reply over our limit: replies come in request order
            self._refuse(
                written[0],
                f"the reply to frame {written[0].id} is {_size(int(match[2]))}, over this agent's "
                f"message limit of {_size(int(match[3]))} (--max-message-mb)",
            )
            return
        if not written or code == grpc.StatusCode.UNAVAILABLE:
            return  # the server or the link went away: reconnect and resend
        # the refusal raced our write (INTERNAL, or the stream just ended): the largest frame
        # unanswered is the suspect; a frame that is so on several breaks in a row breaks them
        suspect = max(written, key=lambda p: len(p.data))
        suspect.strikes += 1
        for entry in written:
            if entry is not suspect:
                entry.strikes = 0
        if suspect.strikes >= TOO_LARGE_STRIKES:
            self._refuse(
                suspect,
                f"the stream broke each of the {suspect.strikes} times frame {suspect.id} "
                f"({_size(len(suspect.data))}) was sent ({why}); it is most likely over the server's "
                "message limit (splitpipe serve --max-message-mb)",
            )

    def _fail(self, exc: BaseException) -> None:
        """A reconnect that cannot succeed (the model is gone): unblock senders and the drain;
        both raise the error."""
        self._failure = exc
        for _ in range(self.options.window):
            self._window.release()
        self._empty.set()

    async def _write(self, entry: Pending) -> bool:
        """Write ``entry`` to the current stream unless it was already written there."""
        async with self._write_lock:
            call = self._call
            if call is None or entry.stream == self._stream or entry.id not in self._pending:
                return False
            entry.stream = self._stream
            entry.sent_at = time.perf_counter()
            entry.sends += 1
            try:
                await call.write(entry.data)
            except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                _LOGGER.debug("write of frame %s failed: %s", entry.id, exc)
                self._broken.set()
                return False
            return True

    async def _read(self, call: Any) -> None:
        pending = self._pending
        while True:
            data = await call.read()
            if data is grpc.aio.EOF:
                if self._closing and not pending:
                    return
                raise ConnectionError("the server ended the stream")
            arrived = time.perf_counter()
            try:
                reply = pb.ModelStreamInferResponse.FromString(data)
            except DecodeError as exc:
                _LOGGER.warning("dropped a reply that is not a ModelStreamInferResponse: %s", exc)
                continue
            frame_id = reply.infer_response.id
            if not frame_id and reply.error_message and pending:
                # a request the server could not read has no id to echo; replies come in
                # request order, so it is the oldest one unanswered
                frame_id = next(iter(pending))
            entry = pending.pop(frame_id, None)
            if entry is None:
                self.duplicates += 1
                continue
            self.replies += 1
            if not pending:
                self._empty.set()
            self._window.release()
            self.on_reply(entry, reply, arrived)


def _tls_failure(address: str, details: str) -> str:
    """One line for a failed handshake: gRPC's reason without its address list, and a hint."""
    reason = re.sub(r"^.*?ipv[46]:\S+:\d+: ", "", details.splitlines()[0]).removesuffix(": OK").strip()
    if "WRONG_VERSION_NUMBER" in details:
        hint = "the server may not speak TLS (started without --tls-cert?)"
    elif "Hostname" in details:
        hint = "the server's certificate is for another name; give --tls-server-name NAME"
    elif "certificate has expired" in details or "certificate is not yet valid" in details:
        hint = "renew the server's certificate (or this device's clock is wrong)"
    elif "CERTIFICATE_VERIFY_FAILED" in details:
        hint = "the server's certificate is not signed by --tls-ca (or the system's roots)"
    else:
        hint = (
            "check the certificates on both sides (a server with --tls-client-ca needs --tls-cert/--tls-key)"
        )
    return f"TLS handshake with {address} failed: {reason}; {hint}"


def _closed_hint(options: ClientOptions) -> str:
    """A closed socket is what gRPC reports when the two ends disagree about TLS."""
    tls = options.tls
    if tls is None:
        return "; if the server speaks TLS, connect with --tls-ca"
    if tls.cert is None:
        return "; if the server asks for client certificates (--tls-client-ca), give --tls-cert and --tls-key"
    return "; a server with --tls-client-ca closes connections whose client certificate its CA did not sign"


async def _status(call: Any) -> tuple[Any, str]:
    """The final status of a call that broke: code and details (None, "" if it has none soon)."""
    if call is None:
        return None, ""
    try:
        code = await asyncio.wait_for(call.code(), 1.0)
        return code, await call.details() or ""
    except (asyncio.TimeoutError, grpc.RpcError):
        return None, ""


def _size(n: int) -> str:
    """A message size for messages: whole MiB as such, else MiB from 1 MiB, else bytes."""
    if n % _MIB == 0:
        return f"{n // _MIB} MiB"
    return f"{n / _MIB:.2f} MiB" if n >= _MIB else f"{n:,} bytes"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").splitlines()
        return f"{exc.code().name}: {details[0] if details else ''}"
    return f"{type(exc).__name__}: {exc}"
