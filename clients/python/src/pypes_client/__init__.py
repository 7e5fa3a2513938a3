"""A thin helper over the generated pypes API modules (`pypes.api.v1`).

    from pypes_client import Client
    client = Client("127.0.0.1:50051", api_key)            # plaintext, loopback
    client = Client("pypes.example.com:443", api_key, tls=True)
    client.sessions.PostMessage(request)                     # the key is sent for you

Every stub of the API is an attribute (`tenants`, `pypes`, `subjects`,
`sessions`, `views`, `analytics`, `erasure`, `privacy`, `media`, `staff`,
`logins`, `integration`, `webhooks`, `regions`); calls carry `authorization: Bearer <key>`.
docs/api.md in the pypes repository is the API reference.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import grpc

from pypes.api.v1 import (
    api_pb2,
    api_pb2_grpc,
    integration_pb2,
    integration_pb2_grpc,
    region_pb2,
    region_pb2_grpc,
)

__all__ = ["Client", "api_pb2", "integration_pb2", "region_pb2"]


class _Auth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
            grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the bearer key (and any extra metadata) to every call."""

    def __init__(self, metadata: Sequence[Tuple[str, str]]):
        self._metadata = list(metadata)

    def _with(self, details):
        metadata = list(details.metadata or []) + self._metadata
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata):
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class Client:
    """A channel to one pypes server with the caller's key on every call."""

    def __init__(
        self,
        target: str,
        key: str,
        *,
        tls: bool = False,
        ca_cert: Optional[bytes] = None,
        tenant: Optional[str] = None,
    ):
        """`target` is host:port. With `tls`, the server's certificate is
        checked against the system roots or `ca_cert` (PEM). `tenant` is the
        `x-pypes-tenant` header staff keys need."""
        if tls or ca_cert is not None:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca_cert))
        else:
            channel = grpc.insecure_channel(target)
        metadata = [("authorization", f"Bearer {key}")]
        if tenant:
            metadata.append(("x-pypes-tenant", tenant))
        self.channel = grpc.intercept_channel(channel, _Auth(metadata))
        self._raw = channel
        c = self.channel
        self.tenants = api_pb2_grpc.TenantServiceStub(c)
        self.pypes = api_pb2_grpc.PypeServiceStub(c)
        self.subjects = api_pb2_grpc.SubjectServiceStub(c)
        self.sessions = api_pb2_grpc.SessionServiceStub(c)
        self.views = api_pb2_grpc.ViewServiceStub(c)
        self.analytics = api_pb2_grpc.AnalyticsServiceStub(c)
        self.erasure = api_pb2_grpc.ErasureServiceStub(c)
        self.privacy = api_pb2_grpc.PrivacyServiceStub(c)
        self.media = api_pb2_grpc.MediaServiceStub(c)
        self.staff = api_pb2_grpc.StaffServiceStub(c)
        self.logins = api_pb2_grpc.EndUserAuthServiceStub(c)
        self.integration = integration_pb2_grpc.IntegrationServiceStub(c)
        self.webhooks = integration_pb2_grpc.WebhookServiceStub(c)
        self.regions = region_pb2_grpc.RegionServiceStub(c)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel is connected (or raises after `timeout`)."""
        grpc.channel_ready_future(self._raw).result(timeout=timeout)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
