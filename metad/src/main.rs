//! `metad` — not implemented yet (see the project's issues).

fn main() {
    eprintln!("metad: not implemented yet");
    std::process::exit(2);
}
