/** Layer 8 — the REST API of a site (a face: it translates HTTP to the orchestration layer). */
export { buildApi, type ApiOptions } from './server.js';
export { ApiClient, API_PREFIX, type ApiEndpoint } from './client.js';
export { startSiteDaemon, type SiteDaemon } from './daemon.js';
