import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { FastifyServerOptions } from 'fastify';
import { codeKey, type SchemaCodeCache } from './schema-code-cache.js';

type CompilersFactory = NonNullable<
  NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']
>;

/** Bump when the way code is generated or loaded here changes: old cache entries are then never read. */
const FORMAT = 1;

/**
 * fastify's own default schema compilers (Ajv for requests, fast-json-stringify for answers),
 * each route's built on the route's first request instead of at startup. A command with
 * `--data` calls two or three of the API's ~80 routes: compiling them all (and loading Ajv)
 * cost it ~150 ms. With a cache, a route's generated code (Ajv's and fast-json-stringify's
 * standalone output: the same functions) is stored once and then loaded without the compilers.
 * The daemon keeps compiling at startup, so a bad schema stops it at once.
 */
export function lazySchemaCompilers(cache?: SchemaCodeCache): CompilersFactory {
  const buildValidator: ValidatorFactory = (externals, options) => {
    let compiler: ValidatorCompiler | undefined;
    const customOptions = (options as { customOptions?: object }).customOptions ?? {};
    const compile = (route: Route): Validator => {
      if (!cache) return (compiler ??= validators().factory()(externals, options))(route);
      const key = codeKey('validator', FORMAT, validators().versions, externals, customOptions, route);
      const code = cache.get(key);
      if (code !== undefined) return load(code, validators().require);
      // Ajv keeps the source only when asked to; fastify's compiler then exposes its Ajv.
      compiler ??= validators().factory()(externals, {
        ...(options as object),
        customOptions: { ...customOptions, code: { source: true } },
      });
      const fn = compiler(route);
      const ajv = (compiler as { [AJV]?: { ajv: unknown } })[AJV]?.ajv;
      try {
        cache.put(key, validators().standalone(ajv, fn));
      } catch {
        // code Ajv cannot write out (a format, say): this route is compiled each time
      }
      return fn;
    };
    return (route) => {
      let fn: Validator | undefined;
      const validate: Validator = (data) => {
        fn ??= compile(route as Route);
        const ok = fn(data);
        validate.errors = fn.errors; // where fastify reads why a request was refused
        return ok;
      };
      return validate;
    };
  };
  const buildSerializer: SerializerFactory = (externals, options) => {
    const opts = (options ?? {}) as object;
    let compiler: SerializerCompiler | undefined;
    let source: ((route: unknown) => string) | undefined;
    const compile = (route: Route): Serialize => {
      if (!cache) return (compiler ??= serializers().factory()(externals, opts))(route);
      const key = codeKey('serializer', FORMAT, serializers().versions, externals, opts, route.schema);
      let code = cache.get(key);
      if (code === undefined) {
        source ??= serializers().factory()(externals, { ...opts, mode: 'standalone' }) as unknown as (
          route: unknown,
        ) => string;
        code = source(route);
        cache.put(key, code);
      }
      return load(code, serializers().require);
    };
    return (route) => {
      let fn: Serialize | undefined;
      return (data) => (fn ??= compile(route as Route))(data);
    };
  };
  return { buildValidator, buildSerializer } as unknown as CompilersFactory;
}

// The shapes of fastify's compiler factories, as far as this file relies on them.
type Route = { schema: unknown; httpPart?: string };
type Validator = ((data: unknown) => boolean | PromiseLike<unknown>) & { errors?: unknown };
type Serialize = (data: unknown) => string;
type ValidatorCompiler = (route: unknown) => Validator;
type SerializerCompiler = (route: unknown) => Serialize;
type ValidatorFactory = (externals: unknown, options: unknown) => ValidatorCompiler;
type SerializerFactory = (externals: unknown, options: unknown) => SerializerCompiler;
/** Where @fastify/ajv-compiler puts its Ajv on a compiler made with `code` options. */
const AJV = Symbol.for('fastify.ajv-compiler.reference');

/** Runs generated CommonJS code (a module.exports of one function) with `req` as its require. */
function load<T>(code: string, req: NodeJS.Require): T {
  const module = { exports: {} as unknown };
  // Code Ajv or fast-json-stringify generated (SchemaCodeCache runs only the user's own files).
  new Function('module', 'exports', 'require', code)(module, module.exports, req);
  return module.exports as T;
}

interface Compilers<F> {
  /** Loads the package (its compiler and everything it needs) and makes a compiler factory. */
  factory: () => F;
  /** Resolves as the compiler package does (the generated code requires its runtime helpers). */
  require: NodeJS.Require;
  /** The versions of the packages that generate the code: part of every cache key. */
  versions: Record<string, string>;
}

/** fastify's own compiler packages, resolved from fastify (so its versions), each loaded when first needed. */
const fromFastify = () => createRequire(createRequire(import.meta.url).resolve('fastify'));

let validatorPackages:
  (Compilers<ValidatorFactory> & { standalone: (ajv: unknown, fn: Validator) => string }) | undefined;
function validators(): NonNullable<typeof validatorPackages> {
  if (!validatorPackages) {
    const req = createRequire(fromFastify().resolve('@fastify/ajv-compiler'));
    validatorPackages = {
      factory: () => (req('@fastify/ajv-compiler') as () => ValidatorFactory)(),
      require: req,
      versions: versionsOf(req, ['@fastify/ajv-compiler', 'ajv']),
      standalone: (ajv, fn) =>
        (req('ajv/dist/standalone') as { default: (ajv: unknown, fn: unknown) => string }).default(ajv, fn),
    };
  }
  return validatorPackages;
}

let serializerPackages: Compilers<SerializerFactory> | undefined;
function serializers(): Compilers<SerializerFactory> {
  if (!serializerPackages) {
    const req = createRequire(fromFastify().resolve('@fastify/fast-json-stringify-compiler'));
    serializerPackages = {
      factory: () => (req('@fastify/fast-json-stringify-compiler') as () => SerializerFactory)(),
      require: req,
      versions: versionsOf(req, ['@fastify/fast-json-stringify-compiler', 'fast-json-stringify']),
    };
  }
  return serializerPackages;
}

function versionsOf(req: NodeJS.Require, names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of names) {
    // The package.json above the package's entry file (a package's "exports" may hide it from require).
    for (let dir = dirname(req.resolve(name)); dir !== dirname(dir); dir = dirname(dir)) {
      const f = join(dir, 'package.json');
      if (!existsSync(f)) continue;
      const pkg = JSON.parse(readFileSync(f, 'utf8')) as { name?: string; version?: string };
      if (pkg.name !== name) continue;
      out[name] = pkg.version ?? '?';
      break;
    }
  }
  return out;
}
