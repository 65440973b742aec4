"""The ``parallax.confidence`` protocol, built so it can share a process with other copies.

The Parallax SDKs (and anyone else) may load their own generated copy of
``parallax.confidence`` into protobuf's *default* descriptor pool, under any
file name and with any generation options. Registering a second copy there
fails (``duplicate file name`` or ``duplicate symbol``), whichever comes
first. So taskplane never touches the default pool for this protocol: its
copy (``taskplane/proxy/confidence.proto``) is built in a private
:class:`~google.protobuf.descriptor_pool.DescriptorPool` together with the
well-known types it imports, and the message classes come from
:func:`~google.protobuf.message_factory.GetMessageClass`. The wire format is
the same bytes either way; only the Python classes differ.

The gRPC stub and servicer glue are written here by hand (protoc's generated
``_grpc.py`` would import a default-pool module). Method paths are the
protocol's, ``/parallax.confidence.ConfidenceAgent/<Method>``.

Nothing imports this module until a gRPC agent is called (or served), so a
client process that only enqueues plans never builds it at all.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool, empty_pb2, message_factory, struct_pb2, timestamp_pb2

from taskplane.proxy._pb.confidence_descriptor import FILE_NAME, SERIALIZED_FILE

#: The protocol's package and service, as they appear in gRPC method paths.
PACKAGE = "parallax.confidence"
SERVICE = f"{PACKAGE}.ConfidenceAgent"


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for dependency in (empty_pb2, struct_pb2, timestamp_pb2):
        pool.AddSerializedFile(dependency.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(SERIALIZED_FILE)
    return pool


#: The private pool holding taskplane's copy of the protocol.
POOL = _build_pool()
#: The file taskplane's copy is registered as (unique to taskplane).
FILE = POOL.FindFileByName(FILE_NAME)


def _message_class(descriptor: Any) -> Any:
    # GetMessageClass is protobuf 4.22+; older releases build classes through a factory
    get = getattr(message_factory, "GetMessageClass", None)
    if get is not None:
        return get(descriptor)
    return message_factory.MessageFactory(POOL).GetPrototype(descriptor)


def _message(name: str) -> Any:
    return _message_class(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


AgentRequest: Any = _message("AgentRequest")
ConfidenceResult: Any = _message("ConfidenceResult")
Health: Any = _message("Health")
Capabilities: Any = _message("Capabilities")
#: ``google.protobuf.Empty`` from the private pool (same bytes as any other Empty).
Empty: Any = _message_class(POOL.FindMessageTypeByName("google.protobuf.Empty"))

#: method name -> (request class, response class)
METHODS: dict[str, tuple[Any, Any]] = {
    "Analyze": (AgentRequest, ConfidenceResult),
    "HealthCheck": (Empty, Health),
    "GetCapabilities": (Empty, Capabilities),
}


class ConfidenceAgentStub:
    """Client stub of ``parallax.confidence.ConfidenceAgent`` (one callable per method).

    Args:
        channel: The channel the calls go through.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        calls = {
            name: channel.unary_unary(
                f"/{SERVICE}/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
            for name, (request, response) in METHODS.items()
        }
        self.Analyze = calls["Analyze"]
        self.HealthCheck = calls["HealthCheck"]
        self.GetCapabilities = calls["GetCapabilities"]


class ConfidenceAgentServicer:
    """Base class of a ``ConfidenceAgent`` server: override the methods you serve."""

    def Analyze(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Answer one task with a ``ConfidenceResult``."""
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Analyze is not implemented")

    def HealthCheck(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Say whether the agent can take work (a ``Health``)."""
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "HealthCheck is not implemented")

    def GetCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Describe the agent (a ``Capabilities``)."""
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetCapabilities is not implemented")


def add_servicer_to_server(servicer: ConfidenceAgentServicer, server: grpc.Server) -> None:
    """Serve *servicer*'s methods on *server* under the protocol's method paths."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
