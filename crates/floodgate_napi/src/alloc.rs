//! The allocator of the addon's Rust allocations: jemalloc with a background purging thread on
//! Linux with glibc, the system allocator elsewhere. Node's own heap (V8, its C++ side) keeps
//! the process's malloc either way: jemalloc is built with prefixed symbols (`_rjem_malloc`),
//! so it only serves what Rust allocates through `#[global_allocator]`.
//!
//! Why (ARCHITECTURE.md, "Memory after an attack"): with glibc's malloc the tokio workers'
//! arenas kept the memory freed after an attack (70 → 272 MiB a minute after the attack ended,
//! every connection closed; a `malloc_trim(0)` took it to 64 MiB, so it was free memory glibc
//! held, not live tables). jemalloc returns dirty pages after `dirty_decay_ms` (10 s), and its
//! background thread does so while the server is quiet, when no allocation would trigger it:
//! 64 → 68 MiB 20 s after the same attack, with the same memory per idle WebSocket.
//!
//! Where it is off, and why:
//! - Windows (msvc): jemalloc does not build there.
//! - musl: the prebuilt musl binary is cross-built, and jemalloc's C build (autoconf, the
//!   target's C compiler) there cannot be checked on this machine; musl's allocator (mallocng)
//!   unmaps freed groups eagerly, so the glibc arena problem is not expected there.
//! - macOS: not measured (no macOS machine here); the system allocator is kept rather than
//!   shipping an untested allocator. The cfg keeps both targets building as before.
//!
//! `disable_initial_exec_tls`: the addon is loaded with `dlopen`; jemalloc's default
//! initial-exec TLS can fail to load there ("cannot allocate memory in static TLS block").

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its initialisation from this symbol (the prefixed
/// `malloc_conf`, a `const char *`: a thin pointer to a NUL-terminated string).
/// `background_thread`: one thread (`max_background_threads:1`) purges the arenas' unused dirty
/// pages on the decay schedule without waiting for an allocation to do it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"background_thread:true,max_background_threads:1\0"[0];
