//! The `umrank` command line.

mod cli;

/// candle's CPU backend runs element-wise ops on a pool of spinning threads; for the small tensors of tiny models
/// the spinning costs more than the work (three times the CPU time for half the speed, measured on the demo's
/// embedder on 2 cores), and matrix products, where parallelism pays, use their own thread pool anyway. So the
/// pool is off unless the user sets `CANDLE_NUM_THREADS` themselves.
fn single_threaded_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn main() -> std::process::ExitCode {
    single_threaded_elementwise_ops();
    umrank::malloc::retain_freed_memory();
    cli::main()
}
