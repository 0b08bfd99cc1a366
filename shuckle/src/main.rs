//! `shuckle` — not implemented yet (see the project's issues).

fn main() {
    eprintln!("shuckle: not implemented yet");
    std::process::exit(2);
}
