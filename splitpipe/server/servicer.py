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
from splitpipe.server.batcher import Batcher, Result
from splitpipe.server.metrics import Metrics
from splitpipe.server.models import MODEL_VERSION, PLATFORM, TailModel
from splitpipe.server.options import ServerOptions
from splitpipe.server.request import InferError, error_response, invalid, prepare, set_total
from splitpipe.server.zerocopy import parse_infer_request

_LOGGER = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVER_NAME = "splitpipe"
#: protocol extensions this server offers (reported by ServerMetadata)
EXTENSIONS = ("streaming", "splitpipe_codecs")


@dataclass
class ServerState:
    """What readiness depends on: False before start and once shutdown begins."""

    ready: bool = False


# stands in for a request that could not be parsed (no model name, no id to echo)
_UNPARSED = pb.ModelInferRequest()


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
        response = pb.ModelMetadataResponse(name=model.name, versions=[MODEL_VERSION], platform=PLATFORM)
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
    def _submit(
        self, data: bytes, arrived: float
    ) -> tuple[pb.ModelInferRequest, asyncio.Future[Result] | InferError]:
        """Parse, check and queue one request; a bad one gets its InferError instead of a future."""
        try:
            request, payloads = parse_infer_request(data)
        except DecodeError as exc:
            return _UNPARSED, invalid(f"the request is not a valid ModelInferRequest: {exc}")
        try:
            model = self._model(request.model_name)
            item = prepare(request, model, self.options.max_tensor_bytes, arrived, payloads)
        except InferError as exc:
            return request, exc
        return request, self.batchers[model.name].submit(item)

    def _failed(self, request: pb.ModelInferRequest, exc: InferError) -> None:
        model = request.model_name if request.model_name in self.models else None
        self.metrics.request_failed(model, exc.code.name)
        _LOGGER.debug("request %r for %r failed: %s", request.id, request.model_name, exc.message)

    async def ModelInfer(self, data: bytes, context: Any) -> pb.ModelInferResponse:
        arrived = time.perf_counter()
        request, outcome = self._submit(data, arrived)
        result = outcome if isinstance(outcome, InferError) else await outcome
        if isinstance(result, InferError):
            self._failed(request, result)
            await context.abort(result.code, result.message)
            raise result  # not reached: abort raises
        response = result.infer_response
        set_total(response, arrived)
        self.metrics.request_done(response.model_name, response.parameters["total_us"].int64_param)
        return response

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # A reader task keeps receiving while earlier requests run, so one stream can keep the
        # tail busy (and batches can form); responses leave in request order. The bounded queue
        # holds at most stream_window requests; beyond that gRPC flow control slows the sender.
        pending: asyncio.Queue[tuple[pb.ModelInferRequest, Any, float] | None] = asyncio.Queue(
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
                request, outcome, arrived = entry
                result = outcome if isinstance(outcome, InferError) else await outcome
                if isinstance(result, InferError):
                    self._failed(request, result)
                    yield error_response(result.message, result.code, request.model_name, request.id)
                    continue
                response = result.infer_response
                set_total(response, arrived)
                self.metrics.request_done(response.model_name, response.parameters["total_us"].int64_param)
                yield result
        finally:
            reader.cancel()


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the handlers like the generated ``add_..._to_server``, except that infer requests
    arrive as bytes and are parsed by :func:`~splitpipe.server.zerocopy.parse_infer_request` in
    the handler: a malformed message then gets INVALID_ARGUMENT (in a stream, an error response
    and the stream goes on) instead of gRPC's UNKNOWN or an ended stream."""

    def unary(handler: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=request.FromString, response_serializer=response.SerializeToString
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
