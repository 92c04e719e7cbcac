fn main() {
    eprintln!("gwos: not built yet");
    std::process::exit(1);
}
