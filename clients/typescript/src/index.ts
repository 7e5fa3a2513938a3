// A thin helper over the generated pypes API (src/gen, made by generate.sh
// with ts-proto for nice-grpc on @grpc/grpc-js): one channel to a pypes
// server, a promise-based client for every service of the API on it (server
// streams are async iterables), and the caller's key on every call.
// docs/api.md in the pypes repository is the API reference.

import {
  type CallOptions,
  type Channel,
  type ClientMiddlewareCall,
  ChannelCredentials,
  Metadata,
  createChannel,
  createClientFactory,
} from "nice-grpc";
import {
  AnalyticsServiceDefinition,
  EndUserAuthServiceDefinition,
  ErasureServiceDefinition,
  MediaServiceDefinition,
  PrivacyServiceDefinition,
  PypeServiceDefinition,
  SessionServiceDefinition,
  StaffServiceDefinition,
  SubjectServiceDefinition,
  TenantServiceDefinition,
  ViewServiceDefinition,
} from "./gen/pypes/api/v1/api";
import { IntegrationServiceDefinition, WebhookServiceDefinition } from "./gen/pypes/api/v1/integration";
import { RegionServiceDefinition } from "./gen/pypes/api/v1/region";

export * as api from "./gen/pypes/api/v1/api";
export * as integration from "./gen/pypes/api/v1/integration";
export * as region from "./gen/pypes/api/v1/region";
export { ClientError, Status } from "nice-grpc";

/** How to reach the server. */
export interface ConnectOptions {
  /** TLS, checked against the system's roots or `caCert` (PEM). */
  tls?: boolean;
  caCert?: Buffer;
  /** The `x-pypes-tenant` header a staff key needs. */
  tenant?: string;
}

/** Connects to `target` (host:port) with `key` on every call. */
export function connect(target: string, key: string, options: ConnectOptions = {}) {
  const credentials =
    options.tls || options.caCert ? ChannelCredentials.createSsl(options.caCert ?? null) : ChannelCredentials.createInsecure();
  const channel: Channel = createChannel(target, credentials);
  const factory = createClientFactory().use(async function* auth<Req, Res>(
    call: ClientMiddlewareCall<Req, Res>,
    callOptions: CallOptions,
  ) {
    const metadata = Metadata(callOptions.metadata);
    metadata.set("authorization", `Bearer ${key}`);
    if (options.tenant) metadata.set("x-pypes-tenant", options.tenant);
    return yield* call.next(call.request, { ...callOptions, metadata });
  });
  return {
    tenants: factory.create(TenantServiceDefinition, channel),
    pypes: factory.create(PypeServiceDefinition, channel),
    subjects: factory.create(SubjectServiceDefinition, channel),
    sessions: factory.create(SessionServiceDefinition, channel),
    views: factory.create(ViewServiceDefinition, channel),
    analytics: factory.create(AnalyticsServiceDefinition, channel),
    erasure: factory.create(ErasureServiceDefinition, channel),
    privacy: factory.create(PrivacyServiceDefinition, channel),
    media: factory.create(MediaServiceDefinition, channel),
    staff: factory.create(StaffServiceDefinition, channel),
    logins: factory.create(EndUserAuthServiceDefinition, channel),
    integration: factory.create(IntegrationServiceDefinition, channel),
    webhooks: factory.create(WebhookServiceDefinition, channel),
    regions: factory.create(RegionServiceDefinition, channel),
    /** Closes the channel (every client above). */
    close: () => channel.close(),
  };
}

/** Every client of the API, as `connect` returns them. */
export type Pypes = ReturnType<typeof connect>;
