/**
 * What JS hands to native code in one call instead of one call per item: entries of four
 * numbers in a reused Float64Array, and their strings and bytes end to end in a reused Buffer,
 * handed over at the end of the current turn (a microtask) or when `flush` is called.
 * The response batch (bridge.ts) and the WebSocket send batch (ws.ts) are both this; what
 * their entries hold is written in wire.ts.
 */

const NUMBERS = 4 * 256
const BYTES = 64 * 1024

/** The native call a batch goes to; it reads (or copies) both arguments before returning. */
export type BatchSink = (entries: Float64Array, payload: Buffer) => void

export class NativeBatch {
  #numbers = new Float64Array(NUMBERS)
  #count = 0
  #bytes = Buffer.allocUnsafe(BYTES)
  #length = 0
  #scheduled = false
  readonly #flush = () => this.flush()

  constructor(
    private readonly sink: BatchSink,
    private readonly reportError: (error: unknown) => void,
  ) {}

  /** Appends one entry of four numbers (after its strings and bytes); it goes out this turn. */
  entry(a: number, b: number, c: number, d: number): void {
    if (this.#count + 4 > this.#numbers.length) {
      const grown = new Float64Array(this.#numbers.length * 2)
      grown.set(this.#numbers)
      this.#numbers = grown
    }
    const numbers = this.#numbers
    const at = this.#count
    numbers[at] = a
    numbers[at + 1] = b
    numbers[at + 2] = c
    numbers[at + 3] = d
    this.#count = at + 4
    if (!this.#scheduled) {
      this.#scheduled = true
      queueMicrotask(this.#flush)
    }
  }

  /**
   * Appends `text` as UTF-8, or one byte per character with `'latin1'` (header lists:
   * ByteStrings); returns how many bytes that took.
   */
  text(text: string, encoding: 'utf8' | 'latin1' = 'utf8'): number {
    if (text.length === 0) return 0
    this.#reserve(encoding === 'latin1' ? text.length : text.length * 3)
    const written = this.#bytes.write(text, this.#length, encoding)
    this.#length += written
    return written
  }

  /** Appends `bytes`; returns their length. */
  bytes(bytes: Uint8Array): number {
    this.#reserve(bytes.byteLength)
    this.#bytes.set(bytes, this.#length)
    this.#length += bytes.byteLength
    return bytes.byteLength
  }

  /** Hands what was gathered to native code in one call (views, not copies), and starts over. */
  flush(): void {
    this.#scheduled = false
    if (this.#count === 0) return
    const entries = this.#numbers.subarray(0, this.#count)
    const payload = this.#bytes.subarray(0, this.#length)
    this.#count = 0
    this.#length = 0
    try {
      this.sink(entries, payload)
    } catch (error) {
      this.reportError(error)
    }
    // After a burst, let go of buffers grown well past their usual size.
    if (this.#bytes.length > 16 * BYTES) this.#bytes = Buffer.allocUnsafe(BYTES)
    if (this.#numbers.length > 16 * NUMBERS) this.#numbers = new Float64Array(NUMBERS)
  }

  #reserve(bytes: number): void {
    if (this.#length + bytes <= this.#bytes.length) return
    const grown = Buffer.allocUnsafe(Math.max(this.#bytes.length * 2, this.#length + bytes))
    this.#bytes.copy(grown, 0, 0, this.#length)
    this.#bytes = grown
  }
}
