/** Layer 8 — the REST API of a site (a face: it translates HTTP to the orchestration layer). */
export { buildApi, API_PREFIX, type ApiOptions } from './server.js';
export { ApiClient, type ApiEndpoint } from './client.js';
export { startSiteDaemon, type SiteDaemon } from './daemon.js';
