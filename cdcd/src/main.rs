//! `cdcd` — not implemented yet (see the project's issues).

fn main() {
    eprintln!("cdcd: not implemented yet");
    std::process::exit(2);
}
