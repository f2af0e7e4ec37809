import { ROLES } from '../orchestration/index.js';

/**
 * Schemas of the session, user and token routes. The answers are closed (additionalProperties:
 * false): the serializer drops anything else, so no hash can slip into an answer.
 */

const role = { type: 'string', enum: [...ROLES] } as const;
const password = { type: 'string', minLength: 1, maxLength: 1024 } as const;
const closed = (required: string[], properties: Record<string, unknown>) =>
  ({ type: 'object', additionalProperties: false, required, properties }) as const;

export const signInBody = {
  type: 'object',
  additionalProperties: false,
  required: ['user', 'password'],
  properties: { user: { type: 'string', minLength: 1, maxLength: 64 }, password },
} as const;

export const sessionAnswer = closed(['user', 'role'], {
  user: { type: 'string' },
  role,
  csrfToken: {
    type: 'string',
    description: 'a console session: send it in X-CSRF-Token with every request but GET, HEAD, OPTIONS',
  },
});

export const userAnswer = closed(['name', 'role', 'createdAt', 'updatedAt'], {
  name: { type: 'string' },
  role,
  createdAt: { type: 'string' },
  updatedAt: { type: 'string' },
});

export const addUserBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'role', 'password'],
  properties: {
    name: {
      type: 'string',
      description: "1-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
    },
    role,
    password,
  },
} as const;

export const passwordBody = {
  type: 'object',
  additionalProperties: false,
  required: ['password'],
  properties: {
    password,
    currentPassword: { ...password, description: 'needed when a user who is not an admin changes their own' },
  },
} as const;

export const roleBody = {
  type: 'object',
  additionalProperties: false,
  required: ['role'],
  properties: { role },
} as const;

export const tokenAnswer = closed(['id', 'user', 'createdAt'], {
  id: { type: 'string' },
  user: { type: 'string' },
  createdAt: { type: 'string' },
  lastUsedAt: { type: 'string' },
});

export const newTokenAnswer = closed(['id', 'user', 'createdAt', 'token'], {
  id: { type: 'string' },
  user: { type: 'string' },
  createdAt: { type: 'string' },
  token: { type: 'string', description: 'the token itself: shown this once, stored only as a hash' },
});

export const userTokenParam = {
  type: 'object',
  required: ['name', 'id'],
  properties: { name: { type: 'string' }, id: { type: 'string' } },
} as const;
