import { readFileSync } from 'node:fs';
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyRequest,
} from 'fastify';
import { HavenError, eagerLogger, type HavenErrorCode } from '../common/index.js';
import { havenVersion, type Site } from '../orchestration/index.js';
import { API_PREFIX } from './client.js';
import { lazySchemaCompilers } from './lazy-schemas.js';
import type { SchemaCodeCache } from './schema-code-cache.js';
import { registerAlertRoutes } from './routes-alerts.js';
import { registerComputeRoutes } from './routes-compute.js';
import { registerCheckRoutes } from './routes-checks.js';
import { registerDrRoutes } from './routes-dr.js';
import { registerPlanRoutes } from './routes-plans.js';
import { registerObjectiveRoutes } from './routes-objectives.js';
import { registerMetricsRoute } from './routes-metrics.js';
import { registerOperationRoutes } from './routes-operations.js';
import { registerPeerRoutes } from './routes-peers.js';
import { sendConsoleFile } from './console-files.js';
import { registerConsoleRoutes } from './routes-console.js';
import { registerSessionRoutes } from './routes-session.js';
import { registerUserRoutes } from './routes-users.js';
import { SESSION_COOKIE, installAuth } from './auth.js';
import { registerPolicyRoutes } from './routes-policies.js';
import { registerGroupRoutes } from './routes-groups.js';
import { registerReplicationRoutes } from './routes-replication.js';
import { registerScheduleRoutes } from './routes-schedules.js';
import { registerStorageRoutes } from './routes-storage.js';

export interface ApiOptions {
  host: string;
  port: number;
  tls?: { cert: string; key: string };
  /** A request's headers and body must all arrive within this (default 30 s); headers within 10 s. */
  requestTimeoutMs?: number;
}

/** How the API is built: the daemon's way by default; a one-command local site asks for less. */
export interface BuildOptions extends Pick<ApiOptions, 'tls' | 'requestTimeoutMs'> {
  /**
   * Compile each route's schemas on its first request, not at startup (default false: a bad
   * schema then stops the daemon at once). The validation is the same either way. With a cache,
   * the generated code of each route's schemas is kept there for the next process.
   */
  lazySchemas?: boolean | SchemaCodeCache;
  /** Serve the OpenAPI document at /api/v1/openapi.json (default true). */
  openapi?: boolean;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const HEADERS_TIMEOUT_MS = 10_000;
/** How often Node checks those bounds: a stalled request is closed at most this late. */
const TIMEOUT_CHECK_MS = 1_000;

const STATUS: Record<HavenErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  OUT_OF_RANGE: 400,
  NOT_FOUND: 404,
  CONFLICT: 409,
  READ_ONLY: 409,
  CANCELLED: 409,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NO_SPACE: 507,
  UNSUPPORTED: 501,
  TIMEOUT: 504,
  PROTOCOL: 502,
  IO: 500,
  CORRUPT: 500,
  INTERNAL: 500,
};

/**
 * The REST API of a site: JSON over HTTP(S), authentication (bearer tokens, console sessions)
 * and roles on every request (auth.ts), bodies validated against the schemas in schemas.ts
 * (unknown fields are refused), errors as `{ error: { code, message, field? } }`, and the
 * OpenAPI document at /api/v1/openapi.json.
 * Handlers only translate between HTTP and the Site's methods.
 */
export async function buildApi(site: Site, opts: BuildOptions = {}): Promise<FastifyInstance> {
  // Slow clients: a request that trickles in (headers or body) is answered 408 and closed once
  // its bound passes, so it cannot hold a socket forever. Responses (job watch streams, long
  // handlers) are not bounded: the bounds are on what the client sends.
  const requestTimeout = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const bounds = {
    headersTimeout: Math.min(HEADERS_TIMEOUT_MS, requestTimeout),
    connectionsCheckingInterval: Math.min(TIMEOUT_CHECK_MS, requestTimeout),
  };
  const app = Fastify({
    loggerInstance: eagerLogger('api') as unknown as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    requestTimeout,
    keepAliveTimeout: 5_000, // an idle keep-alive connection
    forceCloseConnections: true,
    ...(opts.lazySchemas
      ? {
          schemaController: {
            compilersFactory: lazySchemaCompilers(opts.lazySchemas === true ? undefined : opts.lazySchemas),
          },
        }
      : {}),
    ajv: {
      customOptions: {
        removeAdditional: false,
        coerceTypes: false,
        useDefaults: true,
        allErrors: false,
        // Checking the schemas against JSON Schema's own (~30 ms) is the daemon's, at its start.
        ...(opts.lazySchemas ? { validateSchema: false } : {}),
      },
    },
    ...(opts.tls
      ? { https: { cert: readFileSync(opts.tls.cert), key: readFileSync(opts.tls.key), ...bounds } }
      : { http: bounds }),
  });
  installAuth(app, site);
  app.addHook('onResponse', async (req, reply) => {
    app.log.debug({ method: req.method, url: req.url, status: reply.statusCode }, 'request');
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const answer = toErrorAnswer(err, req);
    if (answer.status >= 500) app.log.error({ err, url: req.url }, 'request failed');
    void reply.code(answer.status).send({ error: answer.error });
  });
  app.setNotFoundHandler((req, reply) => {
    const ours = /^\/(api|metrics)(\/|\?|$)/.test(req.url);
    if (!ours && (req.method === 'GET' || req.method === 'HEAD') && sendConsoleFile(req, reply)) return;
    void reply
      .code(404)
      .send({ error: { code: 'NOT_FOUND', message: `no such API path: ${req.method} ${req.url}` } });
  });

  const openapi = opts.openapi ?? true;
  // Loaded only when served: the swagger plugin and its YAML parser are ~30 ms of a CLI command.
  if (openapi)
    await app.register((await import('@fastify/swagger')).default, {
      openapi: {
        openapi: '3.0.3',
        info: {
          title: 'Haven site API',
          version: havenVersion(),
          description: 'Storage, compute, jobs and events of one Haven site.',
        },
        components: {
          securitySchemes: {
            token: { type: 'http', scheme: 'bearer', description: "the site token, or a user's API token" },
            session: {
              type: 'apiKey',
              in: 'cookie',
              name: SESSION_COOKIE,
              description:
                'a console session (POST /api/v1/session); requests but GET, HEAD, OPTIONS carry X-CSRF-Token',
            },
          },
        },
        security: [{ token: [] }, { session: [] }],
      },
    });
  await app.register(
    async (api) => {
      registerSessionRoutes(api, site, { secure: !!opts.tls });
      registerUserRoutes(api, site);
      registerConsoleRoutes(api, site);
      registerOperationRoutes(api, site);
      registerStorageRoutes(api, site);
      registerComputeRoutes(api, site);
      registerCheckRoutes(api, site);
      registerPeerRoutes(api, site);
      registerReplicationRoutes(api, site);
      registerGroupRoutes(api, site);
      registerDrRoutes(api, site);
      registerPlanRoutes(api, site);
      registerObjectiveRoutes(api, site);
      registerPolicyRoutes(api, site);
      registerAlertRoutes(api, site);
      registerScheduleRoutes(api, site);
      if (openapi) api.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
    },
    { prefix: API_PREFIX },
  );
  registerMetricsRoute(app, site);
  return app;
}

interface ErrorAnswer {
  status: number;
  error: { code: string; message: string; field?: string };
}

function toErrorAnswer(err: FastifyError, req: FastifyRequest): ErrorAnswer {
  if (err instanceof HavenError)
    return { status: STATUS[err.code], error: { code: err.code, message: err.message } };
  if (err.validation) {
    const v = err.validation[0]!;
    const where = err.validationContext ?? 'body';
    const params = v.params as Record<string, unknown>;
    const base = `${where}${v.instancePath.replace(/\//g, '.').replace(/\.(\d+)/g, '[$1]')}`;
    if (typeof params.additionalProperty === 'string') {
      const field = `${base}.${params.additionalProperty}`;
      return { status: 400, error: { code: 'INVALID_ARGUMENT', message: `unknown field ${field}`, field } };
    }
    if (typeof params.missingProperty === 'string') {
      const field = `${base}.${params.missingProperty}`;
      return { status: 400, error: { code: 'INVALID_ARGUMENT', message: `missing field ${field}`, field } };
    }
    return {
      status: 400,
      error: { code: 'INVALID_ARGUMENT', message: `${base} ${v.message ?? 'is not valid'}`, field: base },
    };
  }
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500)
    // fastify's own 4xx: bad JSON, wrong content type, body too large
    return {
      status: err.statusCode,
      error: { code: 'INVALID_ARGUMENT', message: `${req.method} ${req.url}: ${err.message}` },
    };
  return { status: 500, error: { code: 'INTERNAL', message: err.message } };
}
