/**
 * What JS hands to native code in one call instead of one call per item: entries of four
 * numbers in a reused Float64Array, and their strings and bytes end to end in a reused Buffer.
 * The response batch (`handlers.ts`) and the WebSocket send batch (`ws.ts`) are both this.
 */

const NUMBERS = 4 * 256
const BYTES = 64 * 1024

export class NativeBatch {
  #numbers = new Float64Array(NUMBERS)
  #count = 0
  #bytes = Buffer.allocUnsafe(BYTES)
  #length = 0

  get isEmpty(): boolean {
    return this.#count === 0
  }

  /** Appends one entry of four numbers. */
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
  }

  /** Appends `text` as UTF-8; returns how many bytes that took. */
  text(text: string): number {
    if (text.length === 0) return 0
    this.#reserve(text.length * 3)
    const written = this.#bytes.write(text, this.#length)
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

  /**
   * The entries and bytes so far, as views (valid until the next append: native code reads or
   * copies them during the call), and an empty batch.
   */
  take(): [Float64Array, Buffer] {
    const taken: [Float64Array, Buffer] = [this.#numbers.subarray(0, this.#count), this.#bytes.subarray(0, this.#length)]
    this.#count = 0
    this.#length = 0
    return taken
  }

  /** After a burst, lets go of buffers grown well past their usual size. */
  shrink(): void {
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
