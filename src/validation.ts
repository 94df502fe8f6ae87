import AjvCompiler, { type ValidatorFactory } from '@fastify/ajv-compiler'
import type { FastifySchema, FastifySchemaCompiler } from 'fastify'

/** What Fastify calls a validator factory with, and what it does at run time (its .d.ts is looser). */
type BuildValidator = (externalSchemas: Record<string, unknown>, options?: { customOptions?: Record<string, unknown> }) => FastifySchemaCompiler<FastifySchema>

const fromPool = AjvCompiler() as unknown as BuildValidator

/**
 * Fastify's own Ajv validator factory, twice: querystrings, params and headers are strings on the
 * wire, so they keep the configured coercion (`?limit=50` is the integer 50); a JSON body carries
 * its own types, so it is validated with `coerceTypes: false` and `{"server": 5}` is a 400 rather
 * than a lookup of server "5". Everything else (formats, shared schemas, options) is the same.
 */
const build: BuildValidator = (externalSchemas, options) => {
  const coercing = fromPool(externalSchemas, options)
  const strict = fromPool(externalSchemas, { ...options, customOptions: { ...options?.customOptions, coerceTypes: false } })
  return (route) => (route.httpPart === 'body' ? strict : coercing)(route)
}

export const strictBodyValidator = build as unknown as ValidatorFactory
