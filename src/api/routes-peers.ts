import type { FastifyInstance } from 'fastify';
import type { PeerOffer, Site } from '../orchestration/index.js';
import * as s from './schemas.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The one-time pairing token a request to /peers/accept came with instead of the API token. */
    pairingToken: string;
  }
}

/** The API path a one-time pairing token opens (server.ts lets exactly this one through with one). */
export const ACCEPT_PEER_PATH = '/peers/accept';

/** Paired sites: pair (both ways), the peer's half of it, one-time tokens, unpair, ping. */
export function registerPeerRoutes(api: FastifyInstance, site: Site): void {
  const tags = ['peers'];
  type Name = { name: string };

  api.get('/peers', { schema: { tags, response: { 200: s.list(s.peerAnswer) } } }, async () =>
    site.peers.list(),
  );
  api.get(
    '/peers/:name',
    { schema: { tags, params: s.nameParam, response: { 200: s.peerAnswer } } },
    async (req) => site.peers.get((req.params as Name).name),
  );
  api.post(
    '/peers',
    {
      schema: {
        tags,
        summary: 'pair with the site at `api`, both ways',
        body: s.pairBody,
        response: { 201: s.peerAnswer },
      },
    },
    async (req, reply) =>
      reply
        .code(201)
        .send(
          await site.peers.pair(req.actor, req.body as { api: string; token: string; fingerprint?: string }),
        ),
  );
  api.post(
    ACCEPT_PEER_PATH,
    {
      schema: {
        tags,
        summary:
          "a site pairing with this one: its identity in, this site's out (API token or pairing token)",
        body: s.acceptPeerBody,
        response: { 200: s.peerOfferAnswer },
      },
    },
    async (req) =>
      site.peers.accept(
        req.actor,
        req.body as PeerOffer & { dryRun?: boolean },
        req.pairingToken ? { pairingToken: req.pairingToken } : {},
      ),
  );
  api.post(
    '/peers/tokens',
    {
      schema: {
        tags,
        summary: 'a one-time token another site may pair with',
        body: s.pairingTokenBody,
        response: { 201: s.pairingTokenAnswer },
      },
    },
    async (req, reply) =>
      reply
        .code(201)
        .send(
          site.peers.createPairingToken(
            req.actor,
            (req.body as { ttlSeconds?: number } | undefined)?.ttlSeconds,
          ),
        ),
  );
  api.post(
    '/peers/:name/ping',
    { schema: { tags, summary: 'a call over the peer link', params: s.nameParam } },
    async (req) => {
      const name = (req.params as Name).name;
      const t = performance.now();
      const answer = await site.peers.call(name, 'ping', null);
      return { site: answer, ms: Math.round((performance.now() - t) * 10) / 10 };
    },
  );
  api.delete('/peers/:name', { schema: { tags, params: s.nameParam } }, async (req, reply) => {
    site.peers.unpair(req.actor, (req.params as Name).name);
    return reply.code(204).send();
  });
}
