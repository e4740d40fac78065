/**
 * Kernel ABI structs as explicit layouts: every field has the byte offset the
 * C compiler gives it, and the ABI test (test/unit/kvm-abi.test.ts) compiles
 * the same names against the kernel headers and compares every size and
 * offset. Values are read and written through a DataView, little-endian.
 */
export type Scalar = "u8" | "u16" | "u32" | "u64" | "i32";

export interface FieldSpec {
  readonly offset: number;
  readonly type: Scalar;
  /** Element count for C arrays (absent for a single value). */
  readonly count?: number;
}

type FieldTable = Readonly<Record<string, FieldSpec>>;

export interface StructLayout<F extends FieldTable = FieldTable> {
  /** The C type, e.g. "struct kvm_regs"; field names are C member designators. */
  readonly cType: string;
  readonly size: number;
  readonly fields: F;
}

type ValueOf<T extends Scalar> = T extends "u64" ? bigint : number;

type FieldDef = readonly [offset: number, type: Scalar, count?: number];

type FieldsFrom<D extends Record<string, FieldDef>> = {
  readonly [K in keyof D]: { readonly offset: number; readonly type: D[K][1]; readonly count?: number };
};

export function defineStruct<const D extends Record<string, FieldDef>>(
  cType: string,
  size: number,
  fields: D,
): StructLayout<FieldsFrom<D>> {
  const table: Record<string, FieldSpec> = {};
  for (const [name, [offset, type, count]] of Object.entries(fields)) {
    if (offset + SCALAR_SIZE[type] * (count ?? 1) > size) throw new Error(`${cType}.${name} lies outside the struct`);
    table[name] = count === undefined ? { offset, type } : { offset, type, count };
  }
  return { cType, size, fields: table as FieldsFrom<D> };
}

/** Field definitions of `inner`, renamed `${prefix}.${name}` and shifted by `base`, for embedded structs. */
export function embed<const P extends string, F extends FieldTable>(
  prefix: P,
  base: number,
  inner: StructLayout<F>,
): { [K in keyof F & string as `${P}.${K}`]: readonly [number, F[K]["type"]] } {
  const out: Record<string, FieldDef> = {};
  for (const [name, spec] of Object.entries(inner.fields)) {
    out[`${prefix}.${name}`] = spec.count === undefined ? [base + spec.offset, spec.type] : [base + spec.offset, spec.type, spec.count];
  }
  return out as never;
}

export const SCALAR_SIZE: Readonly<Record<Scalar, number>> = { u8: 1, u16: 2, u32: 4, u64: 8, i32: 4 };

/** A typed window onto one struct instance in a byte buffer. */
export class StructView<F extends FieldTable> {
  readonly layout: StructLayout<F>;
  readonly bytes: Uint8Array;
  private readonly view: DataView;

  constructor(layout: StructLayout<F>, bytes: Uint8Array = new Uint8Array(layout.size)) {
    if (bytes.byteLength < layout.size) {
      throw new RangeError(`${layout.cType} needs ${layout.size} bytes, buffer has ${bytes.byteLength}`);
    }
    this.layout = layout;
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, layout.size);
  }

  /** Reads a field; `index` selects an element of an array field. */
  get<K extends keyof F & string>(name: K, index = 0): ValueOf<F[K]["type"]> {
    const offset = this.elementOffset(name, index);
    const type = this.layout.fields[name]!.type;
    switch (type) {
      case "u8":
        return this.view.getUint8(offset) as ValueOf<F[K]["type"]>;
      case "u16":
        return this.view.getUint16(offset, true) as ValueOf<F[K]["type"]>;
      case "u32":
        return this.view.getUint32(offset, true) as ValueOf<F[K]["type"]>;
      case "i32":
        return this.view.getInt32(offset, true) as ValueOf<F[K]["type"]>;
      case "u64":
        return this.view.getBigUint64(offset, true) as ValueOf<F[K]["type"]>;
    }
  }

  set<K extends keyof F & string>(name: K, value: ValueOf<F[K]["type"]>, index = 0): this {
    const offset = this.elementOffset(name, index);
    const type = this.layout.fields[name]!.type;
    switch (type) {
      case "u8":
        this.view.setUint8(offset, value as number);
        break;
      case "u16":
        this.view.setUint16(offset, value as number, true);
        break;
      case "u32":
        this.view.setUint32(offset, value as number, true);
        break;
      case "i32":
        this.view.setInt32(offset, value as number, true);
        break;
      case "u64":
        this.view.setBigUint64(offset, BigInt(value), true);
        break;
    }
    return this;
  }

  private elementOffset(name: string, index: number): number {
    const spec = this.layout.fields[name]!;
    if (index !== 0 && !(Number.isInteger(index) && index > 0 && index < (spec.count ?? 1))) {
      throw new RangeError(`${this.layout.cType}.${name}[${index}] is out of range`);
    }
    return spec.offset + index * SCALAR_SIZE[spec.type];
  }
}
