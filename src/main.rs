//! The `dify-shaper` binary: the command line (`cli`) over the proxy library (`dify_shaper`)
//! and its tools (`dify_shaper_tools`).

mod cli;

/// mimalloc instead of glibc's malloc: a proxied request allocates and frees dozens of small
/// buffers (headers, `Bytes`, futures, pool entries), and under glibc those took about a fifth
/// of the proxy's CPU time (`_int_malloc`, `_int_free`, `malloc_consolidate` in a profile of
/// `benches/overhead.sh`); with mimalloc the same load costs about a quarter less CPU per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
