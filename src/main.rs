//! The `dify-shaper` binary: everything lives in the library; see [`dify_shaper::cli`].

fn main() -> std::process::ExitCode {
    dify_shaper::cli::main()
}
