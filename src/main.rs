//! The `hubrelay` binary: every role and admin command in one executable.

/// jemalloc rather than glibc's malloc: bodies and sled's buffers are allocated on one thread (a
/// tokio worker, the store's writer) and freed on another, which glibc's per-thread arenas handle
/// poorly (64 KiB relay: 736–864 msg/s
/// with glibc, 945–1175 with jemalloc in the same rounds; peak RSS after 1.1 GB of dumpster 111 MB,
/// where mimalloc, as fast, held 190 MB). See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    hubrelay::cli::main()
}
