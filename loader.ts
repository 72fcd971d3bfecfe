/**
 * Loads the native addon through the napi-rs generated loader (`binding.js`), and when no
 * binary matches this platform, says which one was needed and what to do about it.
 */
import type * as Native from './binding'

/** The prebuilt packages published beside floodgate (`npm/`, `napi.targets`). */
export const PREBUILT = ['linux-x64-gnu', 'linux-arm64-gnu', 'linux-x64-musl', 'darwin-x64', 'darwin-arm64', 'win32-x64-msvc']

/** This machine's napi-rs platform name, e.g. `linux-x64-gnu`. */
export function platformName(): string {
  const { platform, arch } = process
  if (platform === 'linux') {
    const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined
    return `${platform}-${arch}-${report?.header?.glibcVersionRuntime ? 'gnu' : 'musl'}`
  }
  return platform === 'win32' ? `${platform}-${arch}-msvc` : `${platform}-${arch}`
}

export function loadNative(): typeof Native {
  try {
    return require('./binding') as typeof Native
  } catch (error) {
    const name = platformName()
    const message =
      `floodgate: no native binary for ${name} (Node ${process.version}). ` +
      `It looked for the package floodgate-${name} and for floodgate.${name}.node beside its loader. ` +
      `Prebuilt packages exist for ${PREBUILT.join(', ')}; ` +
      (PREBUILT.includes(name)
        ? `reinstall without --omit=optional / --no-optional so npm installs floodgate-${name}, `
        : 'on this platform ') +
      'or build from source with Rust installed: npm run build in a clone of floodgate.'
    throw Object.assign(new Error(message), { cause: error })
  }
}
