import { createRequire } from 'node:module';
import type { FastifyServerOptions } from 'fastify';

type CompilersFactory = NonNullable<
  NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']
>;

/**
 * fastify's own default schema compilers (Ajv for requests, fast-json-stringify for answers),
 * each route's built on the route's first request instead of at startup. A command with
 * `--data` calls two or three of the API's ~80 routes: compiling them all (and loading Ajv)
 * cost it ~150 ms. The daemon keeps compiling at startup, so a bad schema stops it at once.
 */
export function lazySchemaCompilers(): CompilersFactory {
  const buildValidator: ValidatorFactory = (externals, options) => {
    let compiler: ValidatorCompiler | undefined;
    return (route) => {
      let fn: Validator | undefined;
      const validate: Validator = (data) => {
        fn ??= (compiler ??= defaultValidators()()(externals, options))(route);
        const ok = fn(data);
        validate.errors = fn.errors; // where fastify reads why a request was refused
        return ok;
      };
      return validate;
    };
  };
  const buildSerializer: SerializerFactory = (externals, options) => {
    let compiler: SerializerCompiler | undefined;
    return (route) => {
      let fn: ((data: unknown) => string) | undefined;
      return (data) => (fn ??= (compiler ??= defaultSerializers()()(externals, options))(route))(data);
    };
  };
  return { buildValidator, buildSerializer } as unknown as CompilersFactory;
}

// The shapes of fastify's compiler factories, as far as this file relies on them.
type Validator = ((data: unknown) => boolean | PromiseLike<unknown>) & { errors?: unknown };
type ValidatorCompiler = (route: unknown) => Validator;
type SerializerCompiler = (route: unknown) => (data: unknown) => string;
type ValidatorFactory = (externals: unknown, options: unknown) => ValidatorCompiler;
type SerializerFactory = (externals: unknown, options: unknown) => SerializerCompiler;

/** fastify's own default compilers, resolved from fastify (so its versions), each loaded when first needed. */
const fromFastify = (pkg: string): unknown =>
  createRequire(createRequire(import.meta.url).resolve('fastify'))(pkg);
let validators: (() => ValidatorFactory) | undefined;
let serializers: (() => SerializerFactory) | undefined;
const defaultValidators = () =>
  (validators ??= fromFastify('@fastify/ajv-compiler') as () => ValidatorFactory);
const defaultSerializers = () =>
  (serializers ??= fromFastify('@fastify/fast-json-stringify-compiler') as () => SerializerFactory);
