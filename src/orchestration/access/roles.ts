/**
 * Roles and what every API route asks of its caller: the one place the decision is made
 * (docs/decisions/0020-users-roles-sessions.md). A route not named in ROUTE_RULES gets the
 * default of its method: reads (GET, HEAD, OPTIONS) want a viewer, anything else an operator.
 * So a new route is never open to a viewer by accident, and never admin-only by accident either:
 * a route that changes the site's security must be added below.
 */
export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/**
 * What a route asks: a role (or a higher one); `self`: an admin, or the user the route's `:name`
 * names (their own tokens and password); `public`: nothing (credentials are read if given).
 */
export type Requirement = Role | 'self' | 'public';

const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

export const isRole = (s: string): s is Role => (ROLES as readonly string[]).includes(s);

/** A caller with role `have` may do what asks for role `need`. */
export const roleSatisfies = (have: Role, need: Role): boolean => RANK[have] >= RANK[need];

export const READ_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * The routes whose requirement is not their method's default, as "METHOD /path" with the path
 * as the API registers it below /api/v1 (or at the root, for /metrics). HEAD follows GET.
 */
export const ROUTE_RULES: Readonly<Record<string, Requirement>> = {
  // The console's sign-in, who-am-I and sign-out: the handlers decide.
  'POST /session': 'public',
  'GET /session': 'public',
  'DELETE /session': 'public',
  // User management.
  'POST /users': 'admin',
  'DELETE /users/:name': 'admin',
  'PUT /users/:name/role': 'admin',
  'PUT /users/:name/password': 'self',
  'GET /users/:name/tokens': 'self',
  'POST /users/:name/tokens': 'self',
  'DELETE /users/:name/tokens/:id': 'self',
  // Which sites are trusted: pairing, its one-time tokens, unpairing.
  'POST /peers': 'admin',
  'POST /peers/accept': 'admin',
  'POST /peers/tokens': 'admin',
  'DELETE /peers/:name': 'admin',
  // The daemon reads a file it is pointed at and sends its content elsewhere (a provider's
  // token, a webhook secret, an SMTP password): only an admin may point it.
  'POST /pools/register': 'admin',
  'POST /alerts/channels': 'admin',
  'DELETE /alerts/channels/:id': 'admin',
};

/** What the route `path` asks of a caller using `method`. */
export function requirementOf(method: string, path: string): Requirement {
  const m = method === 'HEAD' ? 'GET' : method;
  return ROUTE_RULES[`${m} ${path}`] ?? (READ_METHODS.has(m) ? 'viewer' : 'operator');
}
