//! `eggs` — not implemented yet (see the project's issues).

fn main() {
    eprintln!("eggs: not implemented yet");
    std::process::exit(2);
}
