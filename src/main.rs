//! The `sandgnat` executable: every role (master, worker, metrics listener)
//! and every operator command is this one binary.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    sandgnat::cli::main()
}
