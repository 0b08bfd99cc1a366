//! `blockd` — not implemented yet (see the project's issues).

fn main() {
    eprintln!("blockd: not implemented yet");
    std::process::exit(2);
}
