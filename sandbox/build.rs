//! Turns the built-in warm-up component (`warm/warm.wat`) into binary form.

fn main() {
    println!("cargo:rerun-if-changed=warm/warm.wat");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wasm = wat::parse_file("warm/warm.wat").expect("warm/warm.wat is valid component text");
    std::fs::write(out.join("warm.wasm"), wasm).expect("writing warm.wasm");
}
