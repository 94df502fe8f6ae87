import t from 'tap'
import { readFileSync } from 'node:fs'
import ts from 'typescript'
import type { IssuedToken as ClientIssuedToken } from '../src/client/index.ts'
import { type IssuedToken, IssuedTokenSchema } from '../src/schemas/tokens.ts'

// The answer of POST /v1/tokens is declared twice: by its schema (what the broker validates and
// publishes) and by the client library, which is packaged on its own and must not import server
// code. These checks hold the two together.

/** True only when A and B are the same type (each property, its type and its optionality). */
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false
// `npm test` typechecks test/: a difference between the two is a compile error here.
const sameType: Same<IssuedToken, ClientIssuedToken> = true

type Shape = { [key: string]: Shape | string }

/** A TypeBox object schema's shape: `name` or `name?` → its JSON type, or the nested shape. */
function schemaShape (schema: { properties: Record<string, unknown>, required?: string[] }): Shape {
  const out: Shape = {}
  for (const [name, p] of Object.entries(schema.properties)) {
    const prop = p as { type: string, properties?: Record<string, unknown>, required?: string[] }
    const key = schema.required?.includes(name) === true ? name : `${name}?`
    out[key] = prop.type === 'object' && prop.properties !== undefined ? schemaShape({ properties: prop.properties, required: prop.required }) : prop.type
  }
  return out
}

/** The same shape of a TypeScript interface, read from its source by the compiler. */
function interfaceShape (file: string, name: string): Shape {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true)
  const members = (list: ts.NodeArray<ts.TypeElement>): Shape => {
    const out: Shape = {}
    for (const m of list) {
      if (!ts.isPropertySignature(m) || m.type === undefined) throw new Error(`${name}: unexpected member ${m.getText(source)}`)
      const key = m.questionToken === undefined ? m.name.getText(source) : `${m.name.getText(source)}?`
      out[key] = ts.isTypeLiteralNode(m.type) ? members(m.type.members) : m.type.kind === ts.SyntaxKind.StringKeyword ? 'string' : m.type.getText(source)
    }
    return out
  }
  let found: Shape | undefined
  source.forEachChild((node) => {
    if (ts.isInterfaceDeclaration(node) && node.name.text === name) found = members(node.members)
  })
  if (found === undefined) throw new Error(`no interface ${name} in ${file}`)
  return found
}

t.test('the client library declares IssuedToken exactly as the broker\'s schema answers it', async (t) => {
  t.equal(sameType, true, 'the static types agree (tsc)')
  const client = interfaceShape('src/client/index.ts', 'IssuedToken')
  const schema = schemaShape(IssuedTokenSchema as unknown as Parameters<typeof schemaShape>[0])
  t.same(client, schema, 'same properties, nesting, types and optionality')
  t.same(Object.keys(schema).sort(), ['expiresAt', 'issuedAt', 'renewAt', 'server', 'token', 'tokenId'], 'and the shape read is the whole answer')
})
