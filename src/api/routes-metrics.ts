import type { FastifyInstance } from 'fastify';
import type { Site } from '../orchestration/index.js';

/** Where Prometheus scrapes (its default metrics_path), beside the API rather than under it. */
export const METRICS_PATH = '/metrics';

/**
 * GET /metrics: the site's metrics in the Prometheus text format (docs/metrics.md). It asks for
 * the API token like every route: Prometheus sends it with `authorization: { credentials_file }`.
 */
export function registerMetricsRoute(app: FastifyInstance, site: Site): void {
  app.get(METRICS_PATH, { schema: { hide: true } }, async (_req, reply) => {
    const { contentType, text } = await site.metrics.exposition();
    return reply.type(contentType).send(text);
  });
}
