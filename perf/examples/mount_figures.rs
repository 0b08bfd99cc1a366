//! Only the mount section of eggs-perf (the same code), for a quick look:
//! `cargo run --release -p perf --example mount_figures -- [MIB]`.

use perf::report::Report;

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|text| text.parse().ok()).unwrap_or(1024);
    let folder = tempfile::Builder::new().prefix("eggs-perf-mount-").tempdir().expect("temporary folder");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut report = Report::default();
    perf::mount::figures(mib << 20, folder.path(), &runtime, &mut report);
    println!("{}", report.text_table());
    println!("{}", report.markdown_table());
}
