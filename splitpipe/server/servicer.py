"""The Open Inference Protocol servicer: health, metadata, ModelInfer and ModelStreamInfer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from splitpipe import __version__
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.server.batcher import Batcher, Outcome
from splitpipe.server.metrics import Metrics
from splitpipe.server.models import MODEL_VERSION, TailModel
from splitpipe.server.options import ServerOptions
from splitpipe.server.request import (
    Checked,
    InferError,
    check,
    error_response,
    invalid,
    set_total,
    typed_contents,
)
from splitpipe.server.zerocopy import split_request

_LOGGER = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVER_NAME = "splitpipe"
#: protocol extensions this server offers (reported by ServerMetadata)
EXTENSIONS = ("streaming", "splitpipe_codecs")


@dataclass
class ServerState:
    """What readiness depends on: False before start and once shutdown begins."""

    ready: bool = False


# Checked requests kept per server (by their small fields, see zerocopy); beyond this many the
# oldest is forgotten, and larger small fields are not kept at all.
_MAX_CHECKED = 256
_MAX_CHECKED_BYTES = 4096


class InferenceServicer:
    """The handlers of ``inference.GRPCInferenceService``; :func:`add_to_server` registers them."""

    def __init__(
        self,
        models: dict[str, TailModel],
        batchers: dict[str, Batcher],
        options: ServerOptions,
        metrics: Metrics,
        state: ServerState,
    ) -> None:
        self.models = models
        self.batchers = batchers
        self.options = options
        self.metrics = metrics
        self.state = state
        self._checked: dict[bytes, Checked] = {}

    # -- health and metadata ----------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        model = self.models.get(request.name)
        known = model is not None and request.version in ("", MODEL_VERSION)
        return pb.ModelReadyResponse(ready=known and self.state.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        try:
            model = self._model(request.name, request.version)
        except InferError as exc:
            await context.abort(exc.code, exc.message)
            raise  # abort raises; this keeps type checkers informed
        response = pb.ModelMetadataResponse(
            name=model.name, versions=[MODEL_VERSION], platform=model.platform
        )
        for specs, datatypes, field in (
            (model.inputs, model.input_datatypes, response.inputs),
            (model.outputs, model.output_datatypes, response.outputs),
        ):
            for spec, datatype in zip(specs, datatypes, strict=True):
                field.add(
                    name=spec.name, datatype=datatype, shape=[-1 if d is None else d for d in spec.shape]
                )
        return response

    def _model(self, name: str, version: str = "") -> TailModel:
        model = self.models.get(name)
        if model is None:
            raise InferError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r}; served models: {', '.join(sorted(self.models))}",
            )
        if version not in ("", MODEL_VERSION):
            raise InferError(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} has no version {version!r}; versions: {MODEL_VERSION}",
            )
        return model

    # -- inference --------------------------------------------------------------------------
    def _submit(self, data: bytes, arrived: float) -> tuple[str, str, Outcome]:
        """Parse, check and queue one request: its model name and id (for an error response),
        and its outcome (a bad request gets its InferError at once)."""
        try:
            return self._check_and_queue(data, arrived)
        except Exception as exc:  # a bug in the checks: fail this request, keep serving (and the stream)
            _LOGGER.exception("checking a request failed")
            error = InferError(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            return "", "", error

    def _check_and_queue(self, data: bytes, arrived: float) -> tuple[str, str, Outcome]:
        try:
            rest, request_id, raws = split_request(data)
        except DecodeError as exc:
            return "", "", invalid(f"the request is not a valid ModelInferRequest: {exc}")
        checked = self._checked.get(rest) if raws else None
        if checked is not None:  # small fields seen before: only the payload sizes are new
            try:
                item = checked.bind(request_id, raws, arrived)
            except InferError as exc:
                return checked.model.name, request_id, exc
            return checked.model.name, request_id, self.batchers[checked.model.name].submit(item)
        try:
            request = pb.ModelInferRequest.FromString(rest)
        except DecodeError as exc:
            return "", request_id, invalid(f"the request is not a valid ModelInferRequest: {exc}")
        try:
            model = self._model(request.model_name)
            checked = check(request, model, self.options.max_tensor_bytes, raw=bool(raws))
            if raws and len(rest) <= _MAX_CHECKED_BYTES:
                if len(self._checked) >= _MAX_CHECKED:
                    del self._checked[next(iter(self._checked))]
                self._checked[rest] = checked
            item = checked.bind(request_id, raws or typed_contents(request, checked), arrived)
        except InferError as exc:
            return request.model_name, request_id, exc
        return model.name, request_id, self.batchers[model.name].submit(item)

    def _failed(self, model_name: str, request_id: str, exc: InferError) -> None:
        self.metrics.request_failed(model_name if model_name in self.models else None, exc.code.name)
        _LOGGER.debug("request %r for %r failed: %s", request_id, model_name, exc.message)

    async def ModelInfer(self, data: bytes, context: Any) -> pb.ModelInferResponse:
        arrived = time.perf_counter()
        model_name, request_id, result = self._submit(data, arrived)
        if isinstance(result, asyncio.Future):
            result = await result
        if isinstance(result, InferError):
            self._failed(model_name, request_id, result)
            await context.abort(result.code, result.message)
            raise result  # not reached: abort raises
        response = result.infer_response
        self.metrics.request_done(model_name, set_total(response, arrived))
        return response

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # A reader task keeps receiving while earlier requests run, so one stream can keep the
        # tail busy (and batches can form); responses leave in request order. The bounded queue
        # holds at most stream_window requests; beyond that gRPC flow control slows the sender.
        pending: asyncio.Queue[tuple[str, str, Outcome, float] | None] = asyncio.Queue(
            maxsize=self.options.stream_window
        )

        async def read() -> None:
            try:
                async for data in request_iterator:
                    arrived = time.perf_counter()
                    await pending.put((*self._submit(data, arrived), arrived))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client went away mid-stream
                _LOGGER.debug("stream read ended: %s", exc)
            await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (entry := await pending.get()) is not None:
                model_name, request_id, result, arrived = entry
                if isinstance(result, asyncio.Future):
                    result = await result
                if isinstance(result, InferError):
                    self._failed(model_name, request_id, result)
                    yield error_response(result.message, result.code, model_name, request_id)
                    continue
                self.metrics.request_done(model_name, set_total(result.infer_response, arrived))
                yield result
        finally:
            reader.cancel()


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the handlers like the generated ``add_..._to_server``, except that infer requests
    arrive as bytes and are parsed by :func:`~splitpipe.server.zerocopy.split_request` in
    the handler: a malformed message then gets INVALID_ARGUMENT (in a stream, an error response
    and the stream goes on) instead of gRPC's UNKNOWN or an ended stream."""

    def unary(handler: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
        # parsed here too: with gRPC's deserializer a malformed message got UNKNOWN, naming a
        # Python exception, and logged a traceback per request
        async def parsed(data: bytes, context: Any) -> Any:
            try:
                message = request.FromString(data)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {request.__name__}: {exc}"
                )
                raise  # abort raises; this keeps type checkers informed
            return await handler(message, context)

        return grpc.unary_unary_rpc_method_handler(
            parsed, request_deserializer=None, response_serializer=response.SerializeToString
        )

    handlers = {
        "ServerLive": unary(servicer.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(servicer.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(servicer.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(servicer.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(servicer.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            servicer.ModelInfer,
            request_deserializer=None,  # bytes: parsed in the handler, so errors get a status
            response_serializer=pb.ModelInferResponse.SerializeToString,
        ),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            servicer.ModelStreamInfer,
            request_deserializer=None,  # bytes: parsed in the handler, so errors get a status
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        ),
    }
    assert set(handlers) == {m.name for m in SERVICE.methods}, "a method of the .proto has no handler"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
