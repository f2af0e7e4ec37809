export { SiteAccess, type AccessOptions, type Principal } from './access.js';
export {
  ROLES,
  ROUTE_RULES,
  READ_METHODS,
  isRole,
  requirementOf,
  roleSatisfies,
  type Requirement,
  type Role,
} from './roles.js';
export { SITE_TOKEN_USER, type User } from './users.js';
export { TOKEN_PREFIX, type UserToken } from './tokens.js';
export { DEFAULT_IDLE_MS, type SessionOptions } from './sessions.js';
export type { ThrottleOptions } from './throttle.js';
